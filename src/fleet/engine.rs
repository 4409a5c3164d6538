//! The engine thread: a current-thread tokio runtime that runs every engine request of this node, the heartbeat and the notification subscriber.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisFuture, Script, Value};

use super::rules::{self, Cursor};
use super::*;
use crate::runtime::mesh::{home_core, CoreMsg, Mesh};

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
    done: Script,
    heartbeat: Script,
}

struct Eng {
    fleet: Arc<Fleet>,
    mesh: Mesh,
    conn: Mutex<Option<Conn>>,
    scripts: Scripts,
    timeout: Duration,
    node_info: String,
    health: Arc<crate::metrics::Metrics>,
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
) -> std::io::Result<Arc<Fleet>> {
    let (fleet, rx) = Fleet::new(cfg.clone(), node_id, me.clone(), retention, dedup_keep);
    metrics.health.engine_down.store(true, Relaxed);
    let eng = Arc::new(Eng {
        fleet: fleet.clone(),
        mesh,
        conn: Mutex::new(None),
        scripts: Scripts {
            append: Script::new(&scripts::append()),
            connect: Script::new(&scripts::connect()),
            fetch: Script::new(scripts::FETCH),
            claim: Script::new(scripts::CLAIM),
            done: Script::new(scripts::DONE),
            heartbeat: Script::new(scripts::HEARTBEAT),
        },
        timeout: Duration::from_millis(cfg.engine_timeout_ms),
        node_info: format!("{} {} {}", me.host, me.port, me.transport),
        health: metrics,
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
    {
        let e2 = eng.clone();
        tokio::spawn(async move { subscriber(e2).await });
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
        let t0 = Instant::now();
        let r = match tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut c)).await {
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
            Request::Connect { core, key, user, device, last_seq } => {
                let result = match tokio::time::timeout(deadline, self.connect(&user, &device, last_seq)).await {
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
            Request::Offline { user, device, acked } => {
                let key = format!("rg:{{{user}}}:p");
                let val = format!("{} {} {} 0", self.fleet.node_id, wall_ms(), acked);
                let mut c = match self.conn() {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let t0 = Instant::now();
                let r: Result<redis::RedisResult<()>, _> =
                    tokio::time::timeout(deadline, redis::cmd("HSET").arg(&key).arg(&*device).arg(val).query_async(&mut c)).await;
                let res = match r {
                    Ok(Ok(())) => 0,
                    Ok(Err(_)) => 1,
                    Err(_) => 2,
                };
                self.fleet.metrics.record(OP_PRESENCE, res, t0.elapsed());
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
            return Ok(Stored { msg_id: msg.msg_id, timestamp_ms: msg.timestamp_ms, seqs });
        };
        let sender = &*msg.from;
        let dkey = format!("rg:{{{sender}}}:d:{device}");
        let qkey = format!("rg:{{{sender}}}:q:{device}");
        let joined = targets.iter().map(|t| &**t).collect::<Vec<_>>().join("\n");
        let group_payload: &[u8] = if msg.group.is_some() { &msg.payload } else { b"" };
        let intent = rules::intent(sender, device, msg.client_msg_id);
        if msg.group.is_some() {
            // The durable intent of a group send, before its claim: a
            // survivor completes a pending claim only through its intent,
            // so a node dying between the two must leave the intent, not
            // the claim, alone (an intent without a claim is forgotten).
            let mut c = self.conn()?;
            let r: Result<redis::RedisResult<i64>, _> =
                tokio::time::timeout(self.timeout, redis::cmd("ZADD").arg(INTENTS).arg(wall_ms()).arg(&intent).query_async(&mut c)).await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(FleetError::Engine(e.to_string())),
                Err(_) => return Err(FleetError::Timeout),
            }
        }
        let claim: Option<Vec<u8>> = self
            .invoke(
                OP_CLAIM,
                self.scripts
                    .claim
                    .key(&dkey)
                    .key(&qkey)
                    .arg(msg.client_msg_id)
                    .arg(msg.msg_id)
                    .arg(msg.timestamp_ms)
                    .arg(&*self.fleet.node_id)
                    .arg(self.fleet.dedup_keep)
                    .arg(&joined)
                    .arg(group_payload),
            )
            .await?;
        let (msg_id, ts, targets) = match rules::after_claim(claim.as_deref(), msg, targets) {
            None => return Err(FleetError::Engine("unreadable dedup record".into())),
            Some(rules::AfterClaim::Answer(stored)) => {
                if msg.group.is_some() {
                    // The intent this retry wrote: the send is done.
                    self.forget_intent(&intent).await;
                }
                return Ok(stored);
            }
            Some(rules::AfterClaim::Append { msg_id, ts, targets, .. }) => (msg_id, ts, targets),
        };
        let key = rules::append_key(sender, device, msg.client_msg_id);
        let appends = targets.iter().map(|t| self.append(t, &key, msg_id, ts, &msg.from, &msg.payload, max, cutoff));
        let mut seqs = Vec::with_capacity(targets.len());
        for (t, r) in targets.iter().zip(futures_util::future::join_all(appends).await) {
            seqs.push((t.clone(), r?));
        }
        let rec = rules::done_record(msg_id, ts, &self.fleet.node_id);
        let _: i64 = self.invoke(OP_DONE, self.scripts.done.key(&dkey).arg(msg.client_msg_id).arg(rec)).await?;
        if msg.group.is_some() {
            self.forget_intent(&intent).await;
        }
        Ok(Stored { msg_id, timestamp_ms: ts, seqs })
    }

    async fn forget_intent(&self, intent: &str) {
        if let Ok(mut c) = self.conn() {
            let _ = tokio::time::timeout(self.timeout, redis::cmd("ZREM").arg(INTENTS).arg(intent).query_async::<i64>(&mut c)).await;
        }
    }

    /// Completes group sends whose claim is older than `age_ms` and still
    /// pending: the node that claimed them died (or its request failed)
    /// before every copy was appended. Appends are idempotent by msg_id,
    /// so a completion racing a client's retry still stores one copy per
    /// member. Returns how many were completed.
    async fn sweep_intents(&self, age_ms: u64) -> Result<usize, FleetError> {
        let mut c = self.conn()?;
        let cutoff = wall_ms().saturating_sub(age_ms);
        let stale: Vec<String> = match tokio::time::timeout(
            self.timeout,
            redis::cmd("ZRANGEBYSCORE").arg(INTENTS).arg("-inf").arg(cutoff).arg("LIMIT").arg(0).arg(32).query_async(&mut c),
        )
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(FleetError::Engine(e.to_string())),
            Err(_) => return Err(FleetError::Timeout),
        };
        let mut done = 0;
        for intent in stale {
            let Some((sender, device, cmid)) = rules::parse_intent(&intent) else {
                self.forget_intent(&intent).await;
                continue;
            };
            let dkey = format!("rg:{{{sender}}}:d:{device}");
            let rec: Option<Vec<u8>> = match tokio::time::timeout(self.timeout, redis::cmd("HGET").arg(&dkey).arg(cmid).query_async(&mut c)).await {
                Ok(Ok(v)) => v,
                _ => continue,
            };
            if let rules::Sweep::Complete(r) = rules::sweep(rec.as_deref()) {
                let (max, cutoff) = self.retention_args();
                let from: Arc<str> = Arc::from(sender);
                let payload = Bytes::from(r.payload);
                let targets: Vec<Arc<str>> = r.targets.into_iter().map(Arc::from).collect();
                let key = rules::append_key(sender, device, cmid);
                let appends = targets.iter().map(|t| self.append(t, &key, r.msg_id, r.ts, &from, &payload, max, cutoff));
                if futures_util::future::join_all(appends).await.iter().any(|x| x.is_err()) {
                    continue;
                }
                let rec = rules::done_record(r.msg_id, r.ts, &self.fleet.node_id);
                let _: i64 = self.invoke(OP_DONE, self.scripts.done.key(&dkey).arg(cmid).arg(rec)).await?;
                tracing::info!(sender, device, client_msg_id = cmid, msg_id = r.msg_id, members = targets.len(), "completed a group send a node left unfinished");
                done += 1;
            }
            self.forget_intent(&intent).await;
        }
        Ok(done)
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(&self, user: &Arc<str>, key: &str, msg_id: u64, ts: u64, from: &Arc<str>, payload: &Bytes, max: u64, cutoff: u64) -> Result<u64, FleetError> {
        let (h, e, i) = (format!("rg:{{{user}}}:h"), format!("rg:{{{user}}}:e"), format!("rg:{{{user}}}:i"));
        let (seq, new): (u64, u64) = self
            .invoke(
                OP_APPEND,
                self.scripts
                    .append
                    .key(h)
                    .key(e)
                    .key(i)
                    .arg(msg_id)
                    .arg(ts)
                    .arg(&**from)
                    .arg(&payload[..])
                    .arg(max)
                    .arg(cutoff)
                    .arg(&*self.fleet.node_id)
                    .arg(&**user)
                    .arg(key),
            )
            .await?;
        if new == 1 {
            // This node's own appends reach its cores directly (the
            // subscriber skips them): no round trip through PUB/SUB.
            let entry = Entry { seq, msg_id, timestamp_ms: ts, from: from.clone(), payload: payload.clone() };
            self.post(user, Event::Entries { user: user.clone(), oldest: 0, head: 0, entries: vec![entry], fetched: false, repaired: false });
        }
        Ok(seq)
    }

    async fn connect(&self, user: &str, device: &str, last_seq: u64) -> Result<Loaded, FleetError> {
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
                    .arg(wall_ms())
                    .arg(max)
                    .arg(cutoff)
                    .arg(LOAD_LIMIT)
                    .arg(user),
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
        let heads: Vec<Option<u64>> = heads.into_iter().map(|h| h.ok().flatten()).collect();
        for (user, have) in rules::repairs(users, &heads) {
            if let Ok((oldest, head, entries)) = self.fetch(&user, have).await {
                self.post_core(core, Event::Entries { user, oldest, head, entries, fetched: true, repaired: true });
            }
        }
    }
}

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

/// Every `heartbeat_ms`: record this node, list the live ones, readiness.
async fn heartbeat(eng: Arc<Eng>) {
    let hb = Duration::from_millis(eng.fleet.cfg.heartbeat_ms);
    let ttl = eng.fleet.cfg.heartbeat_ms * 3;
    let mut durability_checked = false;
    let mut tick = tokio::time::interval(hb);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r: Result<Vec<String>, FleetError> = eng
            .invoke(
                OP_HEARTBEAT,
                eng.scripts.heartbeat.key("rg:{nodes}:z").key("rg:{nodes}:i").arg(&*eng.fleet.node_id).arg(&eng.node_info).arg(ttl),
            )
            .await;
        match r {
            Ok(list) => {
                let nodes: Vec<Node> = list
                    .chunks(2)
                    .filter_map(|p| {
                        let mut w = p.get(1)?.split(' ');
                        Some(Node {
                            id: p[0].clone(),
                            host: w.next()?.to_string(),
                            port: w.next()?.parse().ok()?,
                            transport: w.next()?.to_string(),
                        })
                    })
                    .collect();
                eng.fleet.set_live(nodes);
                if !eng.fleet.engine_ok.swap(true, Relaxed) {
                    tracing::info!("fleet engine reachable: serving");
                }
                eng.health.health.engine_down.store(false, Relaxed);
                if !durability_checked {
                    durability_checked = check_durability(&eng).await;
                }
                // Unfinished group sends older than a dead node's heartbeat
                // window plus a request's longest life.
                if let Err(e) = eng.sweep_intents(ttl + eng.fleet.cfg.engine_timeout_ms).await {
                    tracing::debug!(error = %e, "group intent sweep");
                }
            }
            Err(e) => {
                if eng.fleet.engine_ok.swap(false, Relaxed) {
                    tracing::error!(error = %e, "fleet engine unreachable: SENDs get SENDACK 5 and /readyz 503 until it is back");
                }
                eng.health.health.engine_down.store(true, Relaxed);
            }
        }
    }
}

/// Reads `appendonly` and `appendfsync`: only `yes` + `always` loses
/// nothing confirmed when the engine is killed. Returns false when the
/// settings could not be read (tried again on the next heartbeat).
async fn check_durability(eng: &Eng) -> bool {
    let Ok(mut c) = eng.conn() else { return false };
    let get = |c: &mut Conn, k: &'static str| {
        let mut c = c.clone();
        async move { redis::cmd("CONFIG").arg("GET").arg(k).query_async::<Vec<String>>(&mut c).await }
    };
    let (a, f) = (get(&mut c, "appendonly").await, get(&mut c, "appendfsync").await);
    match (a, f) {
        (Ok(a), Ok(f)) => {
            let (a, f) = (a.get(1).cloned().unwrap_or_default(), f.get(1).cloned().unwrap_or_default());
            let durable = a == "yes" && f == "always";
            eng.fleet.metrics.durable.store(durable as u64, Relaxed);
            if !durable {
                let window = match (a.as_str(), f.as_str()) {
                    ("yes", "everysec") => "about the last second of confirmed messages",
                    ("yes", _) => "whatever the OS has not written back (appendfsync no)",
                    _ => "everything since the last RDB snapshot (appendonly no)",
                };
                tracing::warn!(appendonly = %a, appendfsync = %f, "fleet engine settings allow loss: a kill -9 of the engine loses {window}; run it with appendonly yes, appendfsync always");
            }
            true
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "fleet engine: cannot read its persistence settings (CONFIG GET): treated as not durable");
            eng.fleet.metrics.durable.store(0, Relaxed);
            true
        }
    }
}

/// The notification subscriber: a RESP3 connection whose pushes go straight
/// to the home cores' mailboxes; it resubscribes after a reconnect, and a
/// PING every heartbeat makes it notice a dead connection.
async fn subscriber(eng: Arc<Eng>) {
    let url = eng.fleet.cfg.redis[0].clone();
    let info = match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
        Ok(i) => i,
        Err(e) => return tracing::error!(error = %e, "fleet subscriber URL"),
    };
    let rs = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(rs);
    let client = match redis::Client::open(info) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "fleet subscriber"),
    };
    let me = eng.fleet.node_id.clone();
    let mesh = eng.mesh.clone();
    let sender = move |p: redis::PushInfo| -> Result<(), redis::aio::SendError> {
        if p.kind == redis::PushKind::Message {
            if let Some(Value::BulkString(b)) = p.data.get(1) {
                on_notification(&me, &mesh, b);
            }
        }
        Ok(())
    };
    let mc = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(eng.timeout))
        .set_response_timeout(Some(eng.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(eng.fleet.cfg.heartbeat_ms))
        .set_push_sender(sender)
        .set_automatic_resubscription();
    let mut m = match ConnectionManager::new_lazy_with_config(client, mc) {
        Ok(m) => m,
        Err(e) => return tracing::error!(error = %e, "fleet subscriber"),
    };
    let hb = Duration::from_millis(eng.fleet.cfg.heartbeat_ms);
    let mut subscribed = false;
    loop {
        if !subscribed {
            subscribed = tokio::time::timeout(eng.timeout, m.subscribe("rg:n")).await.is_ok_and(|r| r.is_ok());
        } else {
            let _ = tokio::time::timeout(eng.timeout, redis::cmd("PING").query_async::<Value>(&mut m)).await;
        }
        tokio::time::sleep(hb).await;
    }
}

/// One message of `rg:n` (`scripts.rs`): hands it to the user's home core.
fn on_notification(me: &str, mesh: &Mesh, b: &[u8]) {
    let mut c = Cursor(b);
    let Some(kind) = c.word() else { return };
    let Some(node) = c.word() else { return };
    if node == me.as_bytes() {
        return;
    }
    match kind {
        b"A" => {
            let Some(seq) = c.num() else { return };
            let Some(n) = c.num() else { return };
            let Some(user) = c.take(n as usize).and_then(|u| std::str::from_utf8(u).ok()) else { return };
            let user: Arc<str> = Arc::from(user);
            let Some(entry) = parse_entry(seq, c.rest()) else { return };
            let core = home_core(&user, mesh.len());
            mesh[core].post(CoreMsg::Fleet(Box::new(Event::Entries {
                user,
                oldest: 0,
                head: 0,
                entries: vec![entry],
                fetched: false,
                repaired: false,
            })));
        }
        b"K" => {
            let Some(n) = c.num() else { return };
            let Some(user) = c.take(n as usize).and_then(|u| std::str::from_utf8(u).ok()) else { return };
            let Ok(device) = std::str::from_utf8(c.rest()) else { return };
            let user: Arc<str> = Arc::from(user);
            let core = home_core(&user, mesh.len());
            mesh[core].post(CoreMsg::Fleet(Box::new(Event::Kick { user, device: Arc::from(device) })));
        }
        _ => {}
    }
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
