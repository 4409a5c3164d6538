//! The engine thread: a current-thread tokio runtime that runs every engine request of this node, the heartbeat and the notification subscriber.
//!
//! Here: the data connection (one engine or a Redis Cluster), the scripts,
//! and a core's requests (SEND, CONNECT, fetch, repair, seq floor). The
//! heartbeat is `heartbeat.rs`, the `rg:n` subscriber and the fleet-wide
//! kick `pubsub.rs`, the admin API's operations `admin.rs`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisFuture, Script, Value};

use super::rules::{self, Cursor};
use super::*;
use crate::runtime::mesh::{home_core, CoreMsg, Mesh};

mod admin;
mod heartbeat;
mod pubsub;

use heartbeat::heartbeat;
use pubsub::{subscriber, Control, MAX_CONTROLS};

/// Entries one CONNECT or fetch loads at most; the rest follow by fetch.
const LOAD_LIMIT: usize = 1024;

/// The data connection: one multiplexed connection to a single engine, or
/// a Redis Cluster connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(&'a mut self, p: &'a redis::Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(p, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(p, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    append: Script,
    connect: Script,
    fetch: Script,
    claim: Script,
    send: Script,
    done: Script,
    heartbeat: Script,
    lease: Script,
    floor: Script,
    offline: Script,
    presence: Script,
    live: Script,
    group_cas: Script,
    idem_claim: Script,
    idem_finish: Script,
}

struct Eng {
    fleet: Arc<Fleet>,
    mesh: Mesh,
    conn: Mutex<Option<Conn>>,
    /// One engine, not a Cluster: a SEND is one script (`scripts::send`).
    single: bool,
    scripts: Scripts,
    timeout: Duration,
    node_info: String,
    /// Every live node listens on its own channel (`scripts::NOTIFY`):
    /// appends notify only the nodes the recipient is online on. Off
    /// while a node of the previous version (only `rg:n`) is live.
    targeted: std::sync::atomic::AtomicBool,
    health: Arc<crate::metrics::Metrics>,
    /// The config's `[groups]`: written to an engine that was never seeded.
    seed_groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Fleet-wide kicks this node's admin API is waiting on, by request id:
    /// where the other nodes' answers go. One per admin request thread at
    /// most (`admin.max_connections` bounds it).
    kicks: Mutex<std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<(String, u64)>>>,
}

/// Starts the engine thread; returns at once (the engine may be down:
/// requests then fail with typed errors until it is back).
pub fn start(
    cfg: FleetConfig,
    node_id: String,
    me: Node,
    mesh: Mesh,
    retention: Retention,
    dedup_keep: usize,
    metrics: Arc<crate::metrics::Metrics>,
    seed_groups: std::collections::BTreeMap<String, Vec<String>>,
) -> std::io::Result<Arc<Fleet>> {
    let (fleet, rx) = Fleet::new(cfg.clone(), node_id, me.clone(), retention, dedup_keep);
    metrics.health.engine_down.store(true, Relaxed);
    let eng = Arc::new(Eng {
        fleet: fleet.clone(),
        mesh,
        conn: Mutex::new(None),
        single: cfg.redis.len() == 1,
        scripts: Scripts {
            append: Script::new(&scripts::append()),
            connect: Script::new(&scripts::connect()),
            fetch: Script::new(scripts::FETCH),
            claim: Script::new(&scripts::claim()),
            send: Script::new(&scripts::send()),
            done: Script::new(scripts::DONE),
            heartbeat: Script::new(scripts::HEARTBEAT),
            lease: Script::new(scripts::LEASE),
            floor: Script::new(scripts::FLOOR),
            offline: Script::new(scripts::OFFLINE),
            presence: Script::new(scripts::PRESENCE),
            live: Script::new(scripts::LIVE),
            group_cas: Script::new(scripts::GROUP_CAS),
            idem_claim: Script::new(scripts::IDEM_CLAIM),
            idem_finish: Script::new(scripts::IDEM_FINISH),
        },
        timeout: Duration::from_millis(cfg.engine_timeout_ms),
        node_info: format!("{} {} {} {OWN_CHANNEL}", me.host, me.port, me.transport),
        targeted: std::sync::atomic::AtomicBool::new(false),
        health: metrics,
        seed_groups,
        kicks: Mutex::new(std::collections::HashMap::new()),
    });
    std::thread::Builder::new().name("fleet-engine".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "fleet engine runtime failed to start");
                return;
            }
        };
        rt.block_on(run(eng, rx));
    })?;
    Ok(fleet)
}

async fn run(eng: Arc<Eng>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Request>) {
    let cfg = eng.fleet.cfg.clone();
    // The data connection.
    if cfg.redis.len() == 1 {
        match redis::Client::open(cfg.redis[0].as_str()) {
            Ok(client) => {
                let mc = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(eng.timeout))
                    .set_response_timeout(Some(eng.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(cfg.heartbeat_ms));
                match ConnectionManager::new_lazy_with_config(client, mc) {
                    Ok(m) => set_conn(&eng, Conn::Single(m)),
                    Err(e) => tracing::error!(error = %e, "fleet engine connection"),
                }
            }
            Err(e) => tracing::error!(error = %e, "fleet engine URL"),
        }
    } else {
        let e2 = eng.clone();
        tokio::spawn(async move { connect_cluster(e2).await });
    }
    {
        let e2 = eng.clone();
        tokio::spawn(async move { heartbeat(e2).await });
    }
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<Control>(MAX_CONTROLS);
    {
        let e2 = eng.clone();
        tokio::spawn(async move { subscriber(e2, ctl_tx).await });
    }
    {
        let e2 = eng.clone();
        tokio::spawn(async move {
            while let Some(c) = ctl_rx.recv().await {
                let e3 = e2.clone();
                tokio::spawn(async move { e3.control(c).await });
            }
        });
    }
    while let Some(r) = rx.recv().await {
        let e2 = eng.clone();
        tokio::spawn(async move {
            e2.handle(r).await;
            e2.fleet.done();
        });
    }
}

fn set_conn(eng: &Eng, c: Conn) {
    if let Ok(mut g) = eng.conn.lock() {
        *g = Some(c);
    }
}

async fn connect_cluster(eng: Arc<Eng>) {
    let cfg = &eng.fleet.cfg;
    loop {
        let client = redis::cluster::ClusterClient::builder(cfg.redis.iter().map(|s| s.as_str()))
            .connection_timeout(eng.timeout)
            .response_timeout(eng.timeout)
            .build();
        match client {
            Ok(c) => match c.get_async_connection().await {
                Ok(conn) => {
                    set_conn(&eng, Conn::Cluster(conn));
                    tracing::info!("fleet engine: connected to the Redis Cluster");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "fleet engine: Redis Cluster not reachable yet"),
            },
            Err(e) => {
                tracing::error!(error = %e, "fleet engine: bad cluster configuration");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(cfg.heartbeat_ms)).await;
    }
}

fn err_kind(e: &FleetError) -> usize {
    match e {
        FleetError::Timeout => 2,
        _ => 1,
    }
}

impl Eng {
    fn conn(&self) -> Result<Conn, FleetError> {
        self.conn.lock().ok().and_then(|g| g.clone()).ok_or_else(|| FleetError::Engine("not connected".into()))
    }

    fn post(&self, user: &str, ev: Event) {
        let core = home_core(user, self.mesh.len());
        self.mesh[core].post(CoreMsg::Fleet(Box::new(ev)));
    }

    fn post_core(&self, core: usize, ev: Event) {
        if let Some(m) = self.mesh.get(core) {
            m.post(CoreMsg::Fleet(Box::new(ev)));
        }
    }

    /// Runs one script under the engine timeout, counting it.
    async fn invoke<T: redis::FromRedisValue>(&self, op: usize, inv: &mut redis::ScriptInvocation<'_>) -> Result<T, FleetError> {
        let mut c = self.conn()?;
        self.timed(op, inv.invoke_async::<T>(&mut c)).await
    }

    /// One engine call under `engine_timeout_ms`, its result and duration
    /// recorded under `op`.
    async fn timed<T>(&self, op: usize, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, FleetError> {
        let t0 = Instant::now();
        let r = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(FleetError::Timeout),
            Ok(Err(e)) => Err(FleetError::Engine(e.to_string())),
            Err(_) => Err(FleetError::Timeout),
        };
        self.fleet.metrics.record(op, r.as_ref().err().map_or(0, err_kind), t0.elapsed());
        r
    }

    fn retention_args(&self) -> (u64, u64) {
        let now = wall_ms();
        (self.fleet.retention.max_messages, now.saturating_sub(self.fleet.retention.max_age_ms))
    }

    async fn handle(&self, r: Request) {
        let deadline = self.timeout;
        match r {
            Request::Send { core, req, device, msg, targets } => {
                let result = match tokio::time::timeout(deadline, self.send(device.as_deref(), &msg, targets)).await {
                    Ok(r) => r,
                    Err(_) => Err(FleetError::Timeout),
                };
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "fleet send failed");
                }
                self.post_core(core, Event::Sent { req, result });
            }
            Request::Connect { core, key, user, device, last_seq, remote, at_ms } => {
                let result = match tokio::time::timeout(deadline, self.connect(&user, &device, last_seq, remote, at_ms)).await {
                    Ok(r) => r,
                    Err(_) => Err(FleetError::Timeout),
                };
                self.post_core(core, Event::Connected { key, user, result });
            }
            Request::Fetch { core, user, after } => {
                if let Ok(Ok((oldest, head, entries))) = tokio::time::timeout(deadline, self.fetch(&user, after)).await {
                    self.post_core(core, Event::Entries { user, oldest, head, entries, fetched: true, repaired: false });
                } else {
                    // The next heartbeat's gap check tries again.
                    self.post_core(core, Event::Entries { user, oldest: 0, head: 0, entries: Vec::new(), fetched: true, repaired: false });
                }
            }
            Request::Repair { core, users } => {
                let _ = tokio::time::timeout(deadline, self.repair(core, users)).await;
            }
            Request::Floor { core, user, floor, held, below, after_ms } => {
                let _ = tokio::time::timeout(deadline, self.raise_floor(core, &user, floor, &held, (below, after_ms))).await;
            }
            Request::Offline { user, device, acked, at_ms } => {
                let mut inv = self.scripts.offline.key(format!("rg:{{{user}}}:p"));
                inv.arg(&*device).arg(&*self.fleet.node_id).arg(acked).arg(at_ms);
                let _ = tokio::time::timeout(deadline, self.invoke::<i64>(OP_PRESENCE, &mut inv)).await;
            }
            Request::Admin { op, reply } => {
                let r = match tokio::time::timeout(deadline, self.admin(op)).await {
                    Ok(r) => r,
                    Err(_) => Err(FleetError::Timeout),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Claim, appends, done (module docs, "Dedup across nodes").
    async fn send(&self, device: Option<&str>, msg: &NewMessage, targets: Vec<Arc<str>>) -> Result<Stored, FleetError> {
        let (max, cutoff) = self.retention_args();
        let Some(device) = device else {
            // An admin publish: appends only.
            let key = rules::publish_key(&self.fleet.node_id, msg.msg_id);
            let appends = targets.iter().map(|t| self.append(t, &key, msg.msg_id, msg.timestamp_ms, &msg.from, &msg.payload, max, cutoff));
            let mut seqs = Vec::with_capacity(targets.len());
            for (t, r) in targets.iter().zip(futures_util::future::join_all(appends).await) {
                seqs.push((t.clone(), r?));
            }
            return Ok(Stored { refused: None, msg_id: msg.msg_id, timestamp_ms: msg.timestamp_ms, seqs });
        };
        let sender = &*msg.from;
        let dkey = scripts::dedup_key(sender, device, msg.client_msg_id);
        let qkey = scripts::dedup_queue(sender, device);
        let dprefix = scripts::dedup_prefix(sender, device);
        // The previous version's records of the device (`scripts::dedup_lookup`);
        // the bucket again, not read, where that name is ambiguous.
        let legacy = scripts::legacy_dedup_key(sender, device);
        let (lkey, lflag) = match &legacy {
            Some(k) => (k.as_str(), "1"),
            None => (dkey.as_str(), "0"),
        };
        // A group SEND: its members now, from the engine (module docs,
        // "Groups"); a refusal still looks for a stored original first.
        let mut refusal = None;
        let targets = match &msg.group {
            Some(g) => match self.group_get(g).await? {
                None => {
                    refusal = Some(Refused::NoSuchGroup);
                    Vec::new()
                }
                Some(m) if !m.iter().any(|x| x == sender) => {
                    refusal = Some(Refused::NotMember);
                    Vec::new()
                }
                Some(m) => m.into_iter().filter(|x| x != sender).map(|x| Arc::from(x.as_str())).collect(),
            },
            None => targets,
        };
        let key = rules::append_key(sender, device, msg.client_msg_id);
        let intent = rules::intent(sender, device, msg.client_msg_id);
        let claim: Option<Vec<u8>> = if rules::one_call(self.single, targets.len()) {
            // The whole SEND in one engine call (`scripts::send`): a fresh
            // one is claimed, appended and marked done atomically, so it
            // needs no group intent (nothing can be left half done).
            let mut inv = self.scripts.send.key(&dkey);
            inv.key(&qkey).key(scripts::mute_key(sender)).key(lkey);
            for t in &targets {
                inv.key(format!("rg:{{{t}}}:h")).key(format!("rg:{{{t}}}:e")).key(format!("rg:{{{t}}}:i")).key(format!("rg:{{{t}}}:p"));
            }
            inv.arg(msg.client_msg_id)
                .arg(msg.msg_id)
                .arg(msg.timestamp_ms)
                .arg(&*self.fleet.node_id)
                .arg(self.fleet.dedup_keep)
                .arg(wall_ms())
                .arg(if refusal.is_some() { "0" } else { "1" })
                .arg(&*msg.from)
                .arg(&msg.payload[..])
                .arg(max)
                .arg(cutoff)
                .arg(&key)
                .arg(self.dedup_ttl_ms())
                .arg(&dprefix)
                .arg(lflag)
                .arg(self.targeted());
            for t in &targets {
                inv.arg(&**t);
            }
            let v: Value = self.invoke(OP_SEND, &mut inv).await?;
            let bad = || FleetError::Engine("unexpected SEND reply".into());
            let Value::Array(a) = v else { return Err(bad()) };
            match int(a.first()) {
                1 => {
                    let mut seqs = Vec::with_capacity(targets.len());
                    for (t, p) in targets.iter().zip(a[1..].chunks(2)) {
                        let (seq, new) = (int(p.first()), int(p.get(1)));
                        if new == 1 {
                            self.post_local(t, seq, msg.msg_id, msg.timestamp_ms, &msg.from, &msg.payload);
                        }
                        seqs.push((t.clone(), seq));
                    }
                    if seqs.len() != targets.len() {
                        return Err(bad());
                    }
                    return Ok(Stored { refused: None, msg_id: msg.msg_id, timestamp_ms: msg.timestamp_ms, seqs });
                }
                2 => return Ok(Stored { refused: Some(Refused::Muted), msg_id: 0, timestamp_ms: 0, seqs: Vec::new() }),
                3 => None,
                0 => match a.get(1) {
                    Some(Value::BulkString(r)) => Some(r.clone()),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            }
        } else {
            let joined = targets.iter().map(|t| &**t).collect::<Vec<_>>().join("\n");
            let group_payload: &[u8] = if msg.group.is_some() { &msg.payload } else { b"" };
            if msg.group.is_some() && refusal.is_none() {
                // The durable intent of a group send, before its claim: a
                // survivor completes a pending claim only through its intent,
                // so a node dying between the two must leave the intent, not
                // the claim, alone (an intent without a claim is forgotten).
                // Counted with the claim it precedes (one more write of the SEND).
                let _: i64 = self.query(OP_CLAIM, redis::cmd("ZADD").arg(INTENTS).arg(wall_ms()).arg(&intent)).await?;
            }
            let mut inv = self.claim_call(sender, device, msg.client_msg_id, msg.msg_id, msg.timestamp_ms, &joined, group_payload, refusal.is_none());
            let claim: Option<Vec<u8>> = self.invoke(OP_CLAIM, &mut inv).await?;
            if claim.as_deref() == Some(&b"m"[..]) {
                return Ok(Stored { refused: Some(Refused::Muted), msg_id: 0, timestamp_ms: 0, seqs: Vec::new() });
            }
            claim
        };
        if let (None, Some(r)) = (&claim, refusal) {
            return Ok(Stored { refused: Some(r), msg_id: 0, timestamp_ms: 0, seqs: Vec::new() });
        }
        let (msg_id, ts, targets) = match rules::after_claim(claim.as_deref(), msg, targets) {
            None => return Err(FleetError::Engine("unreadable dedup record".into())),
            Some(rules::AfterClaim::Answer(stored)) => {
                if msg.group.is_some() {
                    // The intent this retry (or the attempt it repeats) wrote: the send is done.
                    self.forget_intent(&intent).await;
                }
                return Ok(stored);
            }
            Some(rules::AfterClaim::Append { msg_id, ts, targets, .. }) => (msg_id, ts, targets),
        };
        // Claimed by this multi-step attempt, or found pending (an attempt
        // that died or timed out): every copy, then done.
        let appends = targets.iter().map(|t| self.append(t, &key, msg_id, ts, &msg.from, &msg.payload, max, cutoff));
        let mut seqs = Vec::with_capacity(targets.len());
        for (t, r) in targets.iter().zip(futures_util::future::join_all(appends).await) {
            seqs.push((t.clone(), r?));
        }
        let rec = rules::done_record(msg_id, ts);
        let _: i64 = self.invoke(OP_DONE, self.scripts.done.key(&dkey).arg(msg.client_msg_id).arg(rec)).await?;
        if msg.group.is_some() {
            self.forget_intent(&intent).await;
        }
        Ok(Stored { refused: None, msg_id, timestamp_ms: ts, seqs })
    }

    /// The claim script's call (`scripts::claim`) for `sender`'s `device`
    /// and `cmid`: with `claim` false it only looks the record up (a
    /// refused group send looking for its stored original; the intent
    /// sweep). One place builds its keys and positional arguments.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim_call(&self, sender: &str, device: &str, cmid: u64, msg_id: u64, ts: u64, targets: &str, payload: &[u8], claim: bool) -> redis::ScriptInvocation<'_> {
        let dkey = scripts::dedup_key(sender, device, cmid);
        // The previous version's records of the device (`scripts::dedup_lookup`);
        // the bucket again, not read, where that name is ambiguous.
        let legacy = scripts::legacy_dedup_key(sender, device);
        let mut inv = self.scripts.claim.key(&dkey);
        inv.key(scripts::dedup_queue(sender, device)).key(scripts::mute_key(sender)).key(legacy.as_deref().unwrap_or(&dkey));
        inv.arg(cmid).arg(msg_id).arg(ts).arg(&*self.fleet.node_id).arg(self.fleet.dedup_keep).arg(targets).arg(payload).arg(wall_ms());
        inv.arg(if claim { "1" } else { "0" }).arg(self.dedup_ttl_ms()).arg(scripts::dedup_prefix(sender, device));
        inv.arg(if legacy.is_some() { "1" } else { "0" });
        inv
    }

    /// `scripts::NOTIFY`'s `targeted` argument.
    fn targeted(&self) -> &'static str {
        if self.targeted.load(Relaxed) {
            "1"
        } else {
            "0"
        }
    }

    /// How long the engine keeps a device's dedup records after its last
    /// SEND: the inbox retention age (a retry older than every copy of its
    /// message is past any use of the answer), and never under a day.
    fn dedup_ttl_ms(&self) -> u64 {
        self.fleet.retention.max_age_ms.max(DEDUP_TTL_FLOOR_MS)
    }

    /// An entry this node appended, straight to the home core of `user`
    /// (the subscriber skips this node's own notifications: no round trip
    /// through PUB/SUB).
    fn post_local(&self, user: &Arc<str>, seq: u64, msg_id: u64, ts: u64, from: &Arc<str>, payload: &Bytes) {
        let entry = Entry { seq, msg_id, timestamp_ms: ts, from: from.clone(), payload: payload.clone() };
        self.post(user, Event::Entries { user: user.clone(), oldest: 0, head: 0, entries: vec![entry], fetched: false, repaired: false });
    }

    /// One plain command under the engine timeout, counted under `op`.
    async fn query<T: redis::FromRedisValue>(&self, op: usize, cmd: &redis::Cmd) -> Result<T, FleetError> {
        let mut c = self.conn()?;
        self.timed(op, cmd.query_async::<T>(&mut c)).await
    }

    /// Raises `user`'s head past `floor` for the devices connected through
    /// an engine data loss, then hands the inbox above `floor` to the core.
    /// Moved above it first (`scripts::FLOOR`): the messages the engine
    /// holds at seqs of `held` with another msg_id than the devices have
    /// there (read here, so that one a notification did not bring is found
    /// too), and those below `newer.0` appended after `newer.1` ms. Logged
    /// and counted like CONNECT's raise.
    async fn raise_floor(&self, core: usize, user: &Arc<str>, floor: u64, held: &[(u64, u64)], newer: (u64, u64)) {
        let mut moved = Vec::new();
        if let Some(&(first, _)) = held.first() {
            match self.fetch(user, first - 1).await {
                Ok((_, _, entries)) => {
                    let held: std::collections::HashMap<u64, u64> = held.iter().copied().collect();
                    moved = entries.iter().filter(|e| e.seq <= floor && held.get(&e.seq).is_some_and(|m| *m != e.msg_id)).map(|e| e.seq).collect();
                }
                // The raise goes on without them: new appends stay above
                // what the devices have; these are found at the next check.
                Err(e) => tracing::debug!(error = %e, "fleet: entries at the mirror's seqs not read"),
            }
        }
        let mut inv = self.scripts.floor.key(format!("rg:{{{user}}}:h"));
        inv.key(format!("rg:{{{user}}}:e")).key(format!("rg:{{{user}}}:i")).arg(floor).arg(newer.0).arg(newer.1);
        for s in &moved {
            inv.arg(*s);
        }
        let (changed, head): (u64, u64) = match self.invoke(OP_CONNECT, &mut inv).await {
            Ok(r) => r,
            Err(e) => return tracing::debug!(error = %e, "fleet: seq floor not raised (tried again)"),
        };
        if changed == 1 {
            self.fleet.metrics.seq_floor_raises.fetch_add(1, Relaxed);
            tracing::warn!(user = %user, floor, head, moved = moved.len(), "engine inbox head was below what connected devices hold (the engine lost data): head raised past it, messages appended meanwhile moved above it, seqs are never reused");
        }
        if let Ok((oldest, head, entries)) = self.fetch(user, floor).await {
            self.post_core(core, Event::Entries { user: user.clone(), oldest, head, entries, fetched: true, repaired: false });
        }
    }

    async fn forget_intent(&self, intent: &str) {
        // Errors ignored: a leftover intent is forgotten by the sweep.
        let _ = self.query::<i64>(OP_DONE, redis::cmd("ZREM").arg(INTENTS).arg(intent)).await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(&self, user: &Arc<str>, key: &str, msg_id: u64, ts: u64, from: &Arc<str>, payload: &Bytes, max: u64, cutoff: u64) -> Result<u64, FleetError> {
        let [h, e, i, p] = ["h", "e", "i", "p"].map(|k| format!("rg:{{{user}}}:{k}"));
        let (seq, new): (u64, u64) = self
            .invoke(
                OP_APPEND,
                self.scripts
                    .append
                    .key(h)
                    .key(e)
                    .key(i)
                    .key(p)
                    .arg(msg_id)
                    .arg(ts)
                    .arg(&**from)
                    .arg(&payload[..])
                    .arg(max)
                    .arg(cutoff)
                    .arg(&*self.fleet.node_id)
                    .arg(&**user)
                    .arg(key)
                    .arg(self.targeted()),
            )
            .await?;
        if new == 1 {
            self.post_local(user, seq, msg_id, ts, from, payload);
        }
        Ok(seq)
    }

    async fn connect(&self, user: &str, device: &str, last_seq: u64, remote: Option<std::net::SocketAddr>, at_ms: u64) -> Result<Loaded, FleetError> {
        let (max, cutoff) = self.retention_args();
        let keys = ["h", "e", "i", "p"].map(|k| format!("rg:{{{user}}}:{k}"));
        let v: Value = self
            .invoke(
                OP_CONNECT,
                self.scripts
                    .connect
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .key(&keys[3])
                    .arg(last_seq)
                    .arg(device)
                    .arg(&*self.fleet.node_id)
                    .arg(at_ms)
                    .arg(max)
                    .arg(cutoff)
                    .arg(LOAD_LIMIT)
                    .arg(user)
                    .arg(remote.map_or_else(|| "-".to_string(), |a| a.to_string())),
            )
            .await?;
        let Value::Array(a) = v else { return Err(FleetError::Engine("unexpected CONNECT reply".into())) };
        let (oldest, head, raised) = (int(a.first()), int(a.get(1)), int(a.get(2)) == 1);
        let entries = parse_entries(a.get(3))?;
        if raised {
            self.fleet.metrics.seq_floor_raises.fetch_add(1, Relaxed);
            tracing::warn!(user, device, last_seq, "engine inbox head was below the device's last_seq (the engine lost data): head raised past it, seqs are never reused");
        }
        Ok(Loaded { oldest, head, raised, entries })
    }

    async fn fetch(&self, user: &str, after: u64) -> Result<(u64, u64, Vec<Entry>), FleetError> {
        let v: Value = self
            .invoke(OP_FETCH, self.scripts.fetch.key(format!("rg:{{{user}}}:h")).key(format!("rg:{{{user}}}:e")).arg(after).arg(LOAD_LIMIT))
            .await?;
        let Value::Array(a) = v else { return Err(FleetError::Engine("unexpected fetch reply".into())) };
        Ok((int(a.first()), int(a.get(1)), parse_entries(a.get(2))?))
    }

    /// Heads of the mirrored users; fetches for those behind.
    async fn repair(&self, core: usize, users: Vec<(Arc<str>, u64)>) {
        let Ok(c) = self.conn() else { return };
        let heads = users.iter().map(|(u, _)| {
            let mut c = c.clone();
            let key = format!("rg:{{{u}}}:h");
            async move { redis::cmd("GET").arg(key).query_async::<Option<u64>>(&mut c).await }
        });
        let t0 = Instant::now();
        let heads = futures_util::future::join_all(heads).await;
        self.fleet.metrics.record(OP_FETCH, heads.iter().any(|h| h.is_err()) as usize, t0.elapsed());
        // A head below what a mirror holds: the engine lost data (a missing
        // key reads as 0: a flush) while devices stayed connected here.
        let lost: Vec<(Arc<str>, u64, u64)> = users
            .iter()
            .zip(&heads)
            .filter_map(|((u, have), h)| match h {
                Ok(h) if h.unwrap_or(0) < *have => Some((u.clone(), *have, h.unwrap_or(0))),
                _ => None,
            })
            .collect();
        for (user, have, head) in lost {
            // Messages appended since the loss sit at seqs the devices
            // here have, and their notifications may be lost with it (a
            // failover drops the subscriber too): the core compares them
            // with its mirror and asks for the raise that moves them
            // (`Event::Entries` → `Request::Floor`). With nothing appended
            // yet, the head is raised at once.
            let fetched = if head > 0 { self.fetch(&user, head.saturating_sub(LOAD_LIMIT as u64)).await.ok() } else { None };
            match fetched {
                Some((oldest, head, entries)) => {
                    self.post_core(core, Event::Entries { user, oldest, head, entries, fetched: false, repaired: false });
                }
                None => self.raise_floor(core, &user, have, &[], (0, u64::MAX)).await,
            }
        }
        let heads: Vec<Option<u64>> = heads.into_iter().map(|h| h.ok().flatten()).collect();
        for (user, have) in rules::repairs(users, &heads) {
            // From the mirror's own head on: the engine's entry at that seq
            // shows whether it is still the mirror's (or one the devices
            // had, below the mirror) — else the engine lost data and its
            // head passed the mirror's again before this check, with the
            // notifications lost (the core asks for the raise).
            if let Ok((oldest, head, entries)) = self.fetch(&user, have.saturating_sub(1)).await {
                self.post_core(core, Event::Entries { user, oldest, head, entries, fetched: true, repaired: true });
            }
        }
    }
}

/// The word a node adds to its heartbeat's address (`host port transport
/// own-channel`) when it listens on `rg:n:<node>` besides `rg:n`; the
/// previous version ignores words after the third.
const OWN_CHANNEL: &str = "own-channel";

/// A node's own notification channel (`scripts::NOTIFY`).
fn own_channel(node: &str) -> String {
    format!("rg:n:{node}")
}

/// The shortest time the engine keeps a device's dedup records after its last SEND.
const DEDUP_TTL_FLOOR_MS: u64 = 86_400_000;

/// Pending group sends: `sender\ndevice\ncmid` by claim time (wall ms).
const INTENTS: &str = "rg:{intents}:z";

/// An entry member `msg_id ts len(from) from payload` at `seq`.
fn parse_entry(seq: u64, m: &[u8]) -> Option<Entry> {
    let mut c = Cursor(m);
    let msg_id = c.num()?;
    let ts = c.num()?;
    let n = c.num()? as usize;
    let from = std::str::from_utf8(c.take(n)?).ok()?;
    Some(Entry { seq, msg_id, timestamp_ms: ts, from: Arc::from(from), payload: Bytes::copy_from_slice(c.rest()) })
}

/// A `ZRANGEBYSCORE .. WITHSCORES` reply: member, score pairs.
fn parse_entries(v: Option<&Value>) -> Result<Vec<Entry>, FleetError> {
    let bad = || FleetError::Engine("unreadable inbox entry".into());
    let Some(Value::Array(a)) = v else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(a.len() / 2);
    for pair in a.chunks(2) {
        let (Some(Value::BulkString(m)), Some(score)) = (pair.first(), pair.get(1)) else { return Err(bad()) };
        let seq = match score {
            Value::BulkString(s) => std::str::from_utf8(s).ok().and_then(|s| s.parse::<f64>().ok()).ok_or_else(bad)? as u64,
            Value::Int(i) => *i as u64,
            Value::Double(d) => *d as u64,
            _ => return Err(bad()),
        };
        out.push(parse_entry(seq, m).ok_or_else(bad)?);
    }
    Ok(out)
}

fn int(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(i)) => (*i).max(0) as u64,
        Some(Value::BulkString(s)) => std::str::from_utf8(s).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        _ => 0,
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::rules::Claim;

    #[test]
    fn entries_and_claims_parse() {
        let e = parse_entry(7, b"123 456 5 alice\x00bin ary").unwrap();
        assert_eq!((e.seq, e.msg_id, e.timestamp_ms, &*e.from, &e.payload[..]), (7, 123, 456, "alice", &b"\x00bin ary"[..]));
        assert!(parse_entry(1, b"1 2 9 short").is_none());
        let c = Claim::parse(b"p 9 8 n1 7 bob\ncarpayload").unwrap();
        assert!(!c.done);
        assert_eq!((c.msg_id, c.ts, c.targets), (9, 8, vec!["bob".to_string(), "car".to_string()]));
        let c = Claim::parse(b"d 9 8 n1 0 ").unwrap();
        assert!(c.done && c.targets.is_empty());
    }
}
