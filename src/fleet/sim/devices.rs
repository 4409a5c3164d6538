//! The simulated devices: connecting to a random live node, sending to
//! users and the group and retrying unanswered SENDs with the same
//! `client_msg_id`, moving between nodes, and the checks made on every
//! frame they read (no seq reuse, dense seqs, no duplicate, one msg_id
//! per SEND, the floor, the repair deadline), and the targeting check
//! made on every append against the nodes they are connected to. Separate
//! from the engine side because this is the client half and where the
//! per-frame invariants live.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use super::fake_engine::Notify;
use super::{World, GROUP, KEEPALIVE_S, STEP_MS};
use crate::proto::error::{connack, sendack};
use crate::proto::frame::{Frame, Send, Utf8Bytes};
use crate::runtime::core::sim::Client;

pub(super) struct Conn {
    pub(super) node: usize,
    pub(super) inc: u32,
    pub(super) client: Client,
    /// CONNACK 0 received at this time.
    pub(super) open_since: Option<u64>,
    /// Seqs below this were announced lost by the CONNACK (`oldest_seq`).
    pub(super) oldest: u64,
    /// Its CONNECT ran in the engine (the inbox loaded, presence written):
    /// from then on an append to the user must be told to this node.
    pub(super) loaded: bool,
    /// SENDs written on this connection and not answered.
    pub(super) inflight: HashSet<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Target {
    User(usize),
    Group,
}

pub(super) struct Outgoing {
    pub(super) cmid: u64,
    pub(super) target: Target,
    pub(super) next_try: u64,
    /// Written on the current connection at this time (a device retries
    /// an unanswered SEND after `RESEND_MS`, as the ladder does).
    pub(super) sent_at: u64,
}

pub(super) const RESEND_MS: u64 = 1_500;

pub(super) struct Device {
    pub(super) user: usize,
    pub(super) id: String,
    pub(super) conn: Option<Conn>,
    pub(super) reconnect_at: u64,
    /// Highest seq with nothing missing below it (what CONNECT presents).
    pub(super) last_seq: u64,
    /// seq → payload tag, for every seq this device ever took.
    pub(super) seen: BTreeMap<u64, String>,
    /// tag → (seq, msg_id): a message reaching the device twice is a bug,
    /// and its msg_id must be the one its sender's SENDACK carried.
    pub(super) got: HashMap<String, (u64, u64)>,
    pub(super) next_cmid: u64,
    pub(super) outgoing: Vec<Outgoing>,
}

#[derive(Default)]
pub(super) struct SendRec {
    pub(super) recipients: Vec<usize>,
    /// msg_id of the first SENDACK 0.
    pub(super) confirmed: Option<u64>,
    pub(super) group: bool,
    pub(super) abandoned: bool,
}

impl World {
    pub(super) fn connect(&mut self, d: usize) {
        let alive = self.alive();
        if alive.is_empty() {
            return;
        }
        let node = alive[self.rng.below(alive.len() as u64) as usize];
        let core = self.rng.below(self.k.cores as u64) as usize;
        let user = self.users[self.devices[d].user].clone();
        let (dev, last) = (self.devices[d].id.clone(), self.devices[d].last_seq);
        let Some(sim) = self.nodes[node].sim.as_mut() else { return };
        let client = sim.connect_at(core);
        let f = sim.connect_frame(&user, &dev, KEEPALIVE_S, last);
        sim.write(client, &f);
        let inc = self.nodes[node].inc;
        self.trace(d, || format!("CONNECT on n{node} last_seq {last}"));
        self.devices[d].conn = Some(Conn { node, inc, client, open_since: None, oldest: 0, loaded: false, inflight: HashSet::new() });
    }

    pub(super) fn drop_conn(&mut self, d: usize, hang_up: bool) {
        self.trace(d, || format!("connection ends (hang up {hang_up})"));
        if let Some(c) = self.devices[d].conn.take() {
            if hang_up {
                let same = self.nodes[c.node].inc == c.inc;
                if let Some(sim) = self.nodes[c.node].sim.as_mut().filter(|_| same) {
                    sim.hang_up(c.client);
                }
            }
        }
        self.devices[d].reconnect_at = self.now + self.rng.below(200);
        let now = self.now;
        for o in &mut self.devices[d].outgoing {
            o.next_try = o.next_try.min(now);
        }
    }

    pub(super) fn write(&mut self, d: usize, f: &Frame) {
        let Some(c) = self.devices[d].conn.as_ref() else { return };
        if let Some(sim) = self.nodes[c.node].sim.as_mut() {
            sim.write(c.client, f);
        }
    }

    pub(super) fn new_send(&mut self, d: usize) {
        let dev = &mut self.devices[d];
        let cmid = dev.next_cmid;
        dev.next_cmid += 1;
        let sender = &self.users[self.devices[d].user];
        let member = self.groups[0].1.contains(sender);
        let (target, recipients) = if member && self.rng.chance(0.3) {
            let members = &self.groups[0].1;
            (Target::Group, members.iter().filter(|m| *m != sender).map(|m| self.users.iter().position(|u| u == m).unwrap_or(0)).collect())
        } else {
            let u = self.rng.below(self.k.users as u64) as usize;
            (Target::User(u), vec![u])
        };
        self.sends.insert((d, cmid), SendRec { recipients, group: target == Target::Group, ..Default::default() });
        self.devices[d].outgoing.push(Outgoing { cmid, target, next_try: self.now, sent_at: 0 });
    }

    pub(super) fn tag(&self, d: usize, cmid: u64) -> String {
        format!("{}/{}/{cmid}", self.users[self.devices[d].user], self.devices[d].id)
    }

    pub(super) fn send_frame(&self, d: usize, o: &Outgoing) -> Frame {
        let (kind, target) = match o.target {
            Target::User(u) => (1, self.users[u].as_str()),
            Target::Group => (2, GROUP),
        };
        Frame::Send(Send { client_msg_id: o.cmid, target_kind: kind, target: Utf8Bytes::from(target), payload: Bytes::from(self.tag(d, o.cmid)) })
    }

    /// Reads what the device's connection got and acts on it.
    pub(super) fn read(&mut self, d: usize) {
        let Some(c) = self.devices[d].conn.as_ref() else { return };
        let (node, client) = (c.node, c.client);
        let Some(sim) = self.nodes[node].sim.as_mut() else { return };
        let frames = sim.frames(client);
        let closed = sim.closed(client) || sim.server_fin(client);
        let mut acked = None;
        for f in frames {
            match f {
                Frame::ConnAck(a) => {
                    self.trace(d, || format!("{a:?}"));
                    if a.status != connack::OK {
                        self.drop_conn(d, true);
                        return;
                    }
                    let last = self.devices[d].last_seq;
                    if a.head_seq < last {
                        self.fail(format!(
                            "{}/{}: CONNACK head_seq {} below the last_seq {last} it presented: the seq floor was not raised",
                            self.users[self.devices[d].user], self.devices[d].id, a.head_seq
                        ));
                    }
                    let now = self.now;
                    if let Some(c) = self.devices[d].conn.as_mut() {
                        c.open_since = Some(now);
                        c.oldest = a.oldest_seq;
                    }
                }
                Frame::Push(p) => {
                    self.trace(d, || format!("PUSH seq {} {:?}", p.seq, String::from_utf8_lossy(&p.payload)));
                    self.on_push(d, p.seq, p.msg_id, String::from_utf8_lossy(&p.payload).to_string());
                    acked = Some(self.devices[d].last_seq);
                }
                Frame::SendAck(a) => self.on_sendack(d, a),
                Frame::Disconnect { .. } => {}
                _ => {}
            }
        }
        if let Some(seq) = acked {
            self.write(d, &Frame::PushAck { seq });
        }
        if closed {
            self.drop_conn(d, false);
        }
    }

    pub(super) fn on_push(&mut self, d: usize, seq: u64, msg_id: u64, tag: String) {
        self.stats.pushes += 1;
        let who = format!("{}/{}", self.users[self.devices[d].user], self.devices[d].id);
        let dev = &self.devices[d];
        if let Some(prev) = dev.seen.get(&seq) {
            if *prev != tag {
                self.fail(format!("{who}: seq {seq} reused: it carried {prev}, now {tag}"));
            }
            return; // a retransmission
        }
        if seq <= dev.last_seq {
            // Below the cursor and never seen: only after a floor raise, where
            // the device presented a last_seq from before the engine's loss.
            self.fail(format!("{who}: seq {seq} at or below its last_seq {} but never received before", dev.last_seq));
        }
        let oldest = dev.conn.as_ref().map_or(0, |c| c.oldest);
        if seq != dev.last_seq + 1 && !(dev.last_seq + 1 < oldest && seq == oldest) {
            // After a data loss, a live connection skips the seqs whose
            // messages the engine lost before this device got them, and
            // the seqs a FLOOR vacated (their message moved above the
            // head); PUSH seqs on a connection need only increase
            // (PROTOCOL.md rule 3). Any other skip is a loss of ours.
            if (dev.last_seq + 1..seq).all(|s| self.gone(dev.user, s)) {
                self.stats.skipped_lost += seq - dev.last_seq - 1;
            } else {
                self.fail(format!("{who}: seq {seq} after {} (CONNACK oldest {oldest}): a seq was skipped", dev.last_seq));
            }
        }
        if let Some(s) = dev.got.get(&tag) {
            // After a data loss a message may come again at a new seq when
            // the engine no longer holds it at the seq it came at: the loss
            // took the entry (or a CONNECT's raise past a device's
            // `last_seq` dropped it) with its append key and the sender's
            // dedup record, and a group send's sweep or the sender's retry
            // stored it again (a retry: under a new msg_id); or a FLOOR
            // moved it above the head (docs/fleet.md, "Seqs are never
            // reused": the device took it at a reused seq its node did not
            // hold).
            let user = &self.users[dev.user];
            let still = self.engine.inboxes.get(user).and_then(|ib| ib.entries.get(&s.0)).map(|e| e.msg_id);
            if self.lost_data && still != Some(s.1) {
                self.stats.twice_after_loss += 1;
            } else {
                self.fail(format!("{who}: {tag} delivered twice, at seq {} and {seq}", s.0));
            }
        }
        // The repair deadline: appended while this connection was open, no
        // failure on its node since.
        let user = self.users[dev.user].clone();
        if let (Some(at), Some(c)) = (self.appended_at.get(&(user, seq)), dev.conn.as_ref()) {
            let bound = 2 * self.k.heartbeat_ms + 4 * self.k.max_call_ms + 4 * STEP_MS;
            let node = &self.nodes[c.node];
            if c.open_since.is_some_and(|o| o < *at) && node.last_fault < *at && self.now - at > bound {
                self.fail(format!("{who}: seq {seq} appended at {at} ms reached the device {} ms later (bound {bound})", self.now - at));
            }
        }
        let dev = &mut self.devices[d];
        dev.seen.insert(seq, tag.clone());
        dev.got.insert(tag, (seq, msg_id));
        dev.last_seq = seq;
    }

    /// After a data loss: `seq` of user `u` lost with the engine's data,
    /// or holding nothing now (vacated by a FLOOR's move, dropped below a
    /// CONNECT's raise: nothing is appended below the head again).
    fn gone(&self, u: usize, seq: u64) -> bool {
        let user = &self.users[u];
        let lost = self.lost.get(user).is_some_and(|(a, b)| (*a..=*b).contains(&seq));
        let empty = self.engine.inboxes.get(user).is_none_or(|ib| !ib.entries.contains_key(&seq));
        self.lost_data && (lost || empty)
    }

    fn device_of(&self, user: &str, device: &str) -> Option<usize> {
        self.devices.iter().position(|d| self.users[d.user] == user && d.id == device)
    }

    /// A CONNECT of `device` ran in the engine on `node`: the device's
    /// connection there has loaded the inbox.
    pub(super) fn loaded(&mut self, node: usize, user: &str, device: &str) {
        let Some(d) = self.device_of(user, device) else { return };
        if let Some(c) = self.devices[d].conn.as_mut().filter(|c| c.node == node && c.open_since.is_none()) {
            c.loaded = true;
        }
    }

    /// The OFFLINE of a connection of `device` that ended on `node` changed
    /// its presence record. A node's calls overtake each other here (as the
    /// separate tasks of `engine.rs` may): when the device is connected
    /// there again and loaded, this OFFLINE ran after the new connection's
    /// CONNECT, and it must have left that connection's record alone
    /// (`scripts::OFFLINE` compares the connection's stamp) — else the
    /// record says offline while the device is online, and appends are not
    /// told to that node until the device connects again.
    pub(super) fn offline_applied(&mut self, node: usize, user: &str, device: &str) {
        let Some(d) = self.device_of(user, device) else { return };
        if self.devices[d].conn.as_ref().is_some_and(|c| c.node == node && c.loaded) {
            self.fail(format!("{user}/{device}: an OFFLINE of an earlier connection set the presence of its newer connection on {} offline", self.nodes[node].id));
        }
    }

    /// The targeting rule (`scripts::NOTIFY`), checked on every append
    /// against where the recipient's devices are: every other live node
    /// holding a connection of `user` that loaded the inbox must hear the
    /// notification (`hears`, before the network loses it), else that
    /// device waits for a gap repair. Excused: a node of the previous
    /// version that the appending node's last heartbeat had not yet seen
    /// live. When the
    /// presence records match the devices exactly, a targeted append is
    /// also told to no other node. After an engine data loss (presence
    /// reverted with the rest) nothing is checked.
    pub(super) fn check_notify(&mut self, node: usize, user: &str, to: &Notify, hears: &[usize]) {
        match to {
            Notify::All => self.stats.broadcast_appends += 1,
            Notify::Nodes(_) => self.stats.targeted_appends += 1,
        }
        if self.lost_data {
            return;
        }
        let recs = self.engine.presence.get(user);
        let mut exact = true;
        let mut holders = Vec::new();
        for (di, d) in self.devices.iter().enumerate().filter(|(_, d)| self.users[d.user] == user) {
            let at = d.conn.as_ref().filter(|c| c.loaded).map(|c| c.node);
            let rec = recs.and_then(|r| r.get(&d.id)).filter(|p| p.online);
            match (at, rec) {
                (Some(b), Some(p)) if self.nodes[b].id == p.node => {}
                (None, None) => {}
                _ => exact = false,
            }
            if let Some(b) = at.filter(|b| *b != node) {
                holders.push((di, b));
            }
        }
        for (di, b) in &holders {
            if hears.contains(b) {
                continue;
            }
            let unseen = self.engine.nodes.get(&self.nodes[*b].id).is_none_or(|r| r.first > self.nodes[node].heartbeat);
            if self.nodes[*b].legacy && matches!(to, Notify::Nodes(_)) && unseen {
                self.stats.unseen_misses += 1;
                continue;
            }
            let old = if self.nodes[*b].legacy { ", a node of the previous version (hears rg:n only)" } else { "" };
            self.fail(format!(
                "an append to {user} by {} was not told to {}{old}, where {user}/{} is connected and loaded (sent to {to:?}; presence {recs:?})",
                self.nodes[node].id, self.nodes[*b].id, self.devices[*di].id
            ));
        }
        let Notify::Nodes(_) = to else { return };
        let stray: Vec<&str> = hears.iter().filter(|o| !holders.iter().any(|(_, b)| b == *o)).map(|o| self.nodes[*o].id.as_str()).collect();
        self.stats.targeted_notes += hears.len() as u64;
        self.stats.stray_notes += stray.len() as u64;
        if exact {
            self.stats.exact_appends += 1;
            if !stray.is_empty() {
                self.fail(format!("an append to {user} by {} was told to {stray:?}, which hold no device of {user}, though presence was exact: {recs:?}", self.nodes[node].id));
            }
        }
    }

    pub(super) fn trace(&self, d: usize, what: impl FnOnce() -> String) {
        let who = format!("{}/{}", self.users[self.devices[d].user], self.devices[d].id);
        if std::env::var("RINGGATE_FLEET_SIM_TRACE").is_ok_and(|t| t == who) {
            eprintln!("t={} {who}: {}", self.now, what());
        }
    }

    pub(super) fn on_sendack(&mut self, d: usize, a: crate::proto::frame::SendAck) {
        self.trace(d, || format!("{a:?}"));
        if let Some(c) = self.devices[d].conn.as_mut() {
            c.inflight.remove(&a.client_msg_id);
        }
        let Some(i) = self.devices[d].outgoing.iter().position(|o| o.cmid == a.client_msg_id) else {
            // An answer to a send already confirmed (a duplicate retry): the same msg_id.
            if a.status == sendack::STORED {
                let first = self.sends.get(&(d, a.client_msg_id)).and_then(|s| s.confirmed);
                if first.is_some_and(|m| m != a.msg_id) {
                    self.fail(format!("{}: SENDACK 0 for {} with msg_id {} after {first:?}", self.tag(d, a.client_msg_id), a.client_msg_id, a.msg_id));
                }
            }
            return;
        };
        if a.status == sendack::STORED {
            self.devices[d].outgoing.remove(i);
            let tag = self.tag(d, a.client_msg_id);
            let rec = self.sends.entry((d, a.client_msg_id)).or_default();
            match rec.confirmed {
                Some(m) if m != a.msg_id => self.fail(format!("{tag}: a retry got msg_id {} instead of the original {m}", a.msg_id)),
                _ => rec.confirmed = Some(a.msg_id),
            }
            match self.msg_ids.insert(a.msg_id, (d, a.client_msg_id)) {
                Some(other) if other != (d, a.client_msg_id) => {
                    self.fail(format!("{tag}: msg_id {} was already given to {}", a.msg_id, self.tag(other.0, other.1)))
                }
                _ => {}
            }
            self.stats.confirmed += 1;
        } else if a.status == sendack::RETRY || a.status == sendack::RATE_LIMITED {
            // SENDACK 5 (engine), 3 (rate): the same id again, later.
            let back = 20 + self.rng.below(200);
            self.devices[d].outgoing[i].next_try = self.now + back;
        } else {
            self.fail(format!("{}: SENDACK {} (the simulation sends only what is allowed)", self.tag(d, a.client_msg_id), a.status));
        }
    }

    pub(super) fn devices_act(&mut self, calm: bool) {
        for d in 0..self.devices.len() {
            self.read(d);
            if self.devices[d].conn.is_none() {
                if self.now >= self.devices[d].reconnect_at {
                    self.connect(d);
                }
                continue;
            }
            let open = self.devices[d].conn.as_ref().is_some_and(|c| c.open_since.is_some());
            if !open {
                continue;
            }
            if !calm {
                if self.rng.chance(self.k.p_move) {
                    // Off for a while or to another node; what is in flight
                    // is retried there (or, sometimes, never: the device is gone).
                    let mut inflight: Vec<u64> = self.devices[d].conn.as_ref().map(|c| c.inflight.iter().copied().collect()).unwrap_or_default();
                    inflight.sort();
                    for cmid in inflight {
                        if self.rng.chance(self.k.p_give_up) {
                            self.devices[d].outgoing.retain(|o| o.cmid != cmid);
                            if let Some(r) = self.sends.get_mut(&(d, cmid)) {
                                r.abandoned = true;
                            }
                        }
                    }
                    self.drop_conn(d, true);
                    continue;
                }
                if self.rng.chance(self.k.p_send) {
                    self.new_send(d);
                }
            }
            let now = self.now;
            let due: Vec<usize> = (0..self.devices[d].outgoing.len())
                .filter(|i| {
                    let o = &self.devices[d].outgoing[*i];
                    let inflight = self.devices[d].conn.as_ref().is_some_and(|c| c.inflight.contains(&o.cmid));
                    (o.next_try <= now && !inflight) || (inflight && now >= o.sent_at + RESEND_MS)
                })
                .collect();
            for i in due {
                let f = self.send_frame(d, &self.devices[d].outgoing[i]);
                let cmid = self.devices[d].outgoing[i].cmid;
                self.devices[d].outgoing[i].next_try = u64::MAX;
                self.devices[d].outgoing[i].sent_at = now;
                if let Some(c) = self.devices[d].conn.as_mut() {
                    c.inflight.insert(cmid);
                }
                self.trace(d, || format!("SEND {cmid}"));
                self.write(d, &f);
            }
        }
    }
}
