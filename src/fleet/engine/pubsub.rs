//! The `rg:n` channel: the notification subscriber that hands other
//! nodes' appends and kicks to the home cores, and the fleet-wide kick
//! handshake (`X` asks, `C` answers) that rides on the same channel.
//!
//! Separate from `engine.rs` because it is the one part of the engine
//! thread that the engine calls *into* (RESP3 pushes, a callback that must
//! not block) rather than one this node calls; its wire format is
//! `scripts.rs`'s notifications.

use super::*;

/// Work the subscriber hands to the engine thread (it needs engine calls
/// or waits, which a push callback must not make).
pub(super) enum Control {
    /// Another node's admin API kicks `user` fleet-wide: close here, answer `asker`.
    Kick { asker: String, req: String, user: Arc<str> },
    /// A node's answer to this node's kick `req`.
    Kicked { req: String, node: String, closed: u64 },
}

/// Controls queued from the subscriber; beyond it they are dropped like a
/// lost notification (an unanswered kick is a 503 the operator retries).
pub(super) const MAX_CONTROLS: usize = 1024;

impl Eng {
    /// `DELETE /v1/users/{u}/connections` on the other live nodes: asks
    /// them on `rg:n` (`X <me> <req> <len(user)> <user>`) and waits for each
    /// one's answer (`C <node> <me> <req> <closed>`), asking once more
    /// halfway (a subscriber may have been reconnecting). A live node that
    /// does not answer makes it an error (503): the operator cannot be told
    /// the user is off when a node may still hold a connection.
    pub(super) async fn kick(&self, user: &str) -> Result<u64, FleetError> {
        let me = &*self.fleet.node_id;
        let others: Vec<String> = self.fleet.live_nodes().iter().filter(|n| n.id != me).map(|n| n.id.clone()).collect();
        if others.is_empty() {
            return Ok(0);
        }
        let mut nonce = [0u8; 8];
        let _ = getrandom::getrandom(&mut nonce);
        let req = hex::encode(nonce);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut k) = self.kicks.lock() {
            k.insert(req.clone(), tx);
        }
        let ask = format!("X {me} {req} {} {user}", user.len());
        let result = async {
            let t0 = tokio::time::Instant::now();
            let budget = self.timeout * 3 / 4;
            let mut answered: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
            for round in 1..=2u32 {
                let _: i64 = self.query(OP_PRESENCE, redis::cmd("PUBLISH").arg("rg:n").arg(&ask)).await?;
                let until = t0 + budget * round / 2;
                while !others.iter().all(|n| answered.contains_key(n)) {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some((node, closed))) => {
                            let n = answered.entry(node).or_default();
                            *n = (*n).max(closed);
                        }
                        _ => break,
                    }
                }
                if others.iter().all(|n| answered.contains_key(n)) {
                    return Ok(answered.values().sum());
                }
            }
            let missing: Vec<&String> = others.iter().filter(|n| !answered.contains_key(*n)).collect();
            Err(FleetError::Engine(format!("live nodes {missing:?} did not confirm the kick")))
        }
        .await;
        if let Ok(mut k) = self.kicks.lock() {
            k.remove(&req);
        }
        result
    }

    /// What the subscriber handed over (see [`Control`]).
    pub(super) async fn control(&self, c: Control) {
        match c {
            Control::Kick { asker, req, user } => {
                let (tx, rx) = std::sync::mpsc::channel();
                let core = home_core(&user, self.mesh.len());
                self.mesh[core].post(CoreMsg::Admin(Box::new(crate::runtime::core::admin::AdminCmd::Kick { user, reply: tx })));
                let wait = self.timeout / 2;
                let Ok(Ok(closed)) = tokio::task::spawn_blocking(move || rx.recv_timeout(wait)).await else { return };
                let answer = format!("C {} {asker} {req} {closed}", self.fleet.node_id);
                if let Err(e) = self.query::<i64>(OP_PRESENCE, redis::cmd("PUBLISH").arg("rg:n").arg(answer)).await {
                    tracing::warn!(error = %e, "fleet: cannot answer another node's kick");
                }
            }
            Control::Kicked { req, node, closed } => {
                if let Some(tx) = self.kicks.lock().ok().and_then(|k| k.get(&req).cloned()) {
                    let _ = tx.send((node, closed));
                }
            }
        }
    }
}

/// The notification subscriber: a RESP3 connection subscribed to `rg:n`
/// and this node's own channel (`rg:n:<node>`, `scripts::NOTIFY`), whose
/// pushes go straight to the home cores' mailboxes (kicks to the engine
/// thread). A PING every heartbeat notices a dead connection; then it
/// subscribes again on the next candidate that answers ([`Candidates`]):
/// the configured seed URLs and, on a Redis Cluster, the nodes the
/// cluster lists (`CLUSTER SHARDS` through the data connection, asked
/// again at every move, so a node added later or a promoted replica is
/// found). A Cluster broadcasts every PUBLISH to all of its nodes, so any
/// reachable one will do: a dead shard, even the only seed, just moves
/// the subscriber. Those that failed most recently are tried last; after
/// a round with none reachable it waits a heartbeat. What is published
/// while it is away is found by the heartbeat's gap repair.
pub(super) async fn subscriber(eng: Arc<Eng>, ctl: tokio::sync::mpsc::Sender<Control>) {
    let hb = Duration::from_millis(eng.fleet.cfg.heartbeat_ms);
    let mut seeds = Vec::new();
    for url in &eng.fleet.cfg.redis {
        match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
            Ok(info) => seeds.push(info),
            // `validate()` refuses such a URL; the engine connection logs it too.
            Err(e) => tracing::error!(error = %e, "fleet subscriber: seed URL not usable"),
        }
    }
    let mut nodes = Candidates::new(seeds);
    loop {
        if !eng.single {
            match eng.cluster_nodes(nodes.tls()).await {
                Ok(learned) => nodes.learn(&learned),
                Err(e) => tracing::debug!(error = %e, "fleet subscriber: cluster nodes not listed; trying those known"),
            }
        }
        let mut subscribed = false;
        for info in nodes.order() {
            let r = subscribe_on(&eng, &info, &ctl).await;
            // Lost after a while or never reached: last in the next round.
            nodes.failed(info.addr());
            match r {
                Ok(()) => {
                    subscribed = true;
                    break;
                }
                Err(e) => tracing::debug!(node = %info.addr(), error = %e, "fleet subscriber: node not reachable"),
            }
        }
        if !subscribed {
            // A whole round refused: wait a heartbeat before the next.
            tokio::time::sleep(hb).await;
        }
    }
}

impl Eng {
    /// The nodes of the Cluster, from `CLUSTER SHARDS` asked through the
    /// data connection (which already follows the slot map from whichever
    /// node it still reaches). Counted with the heartbeat's reads: one per
    /// move of the subscriber.
    async fn cluster_nodes(&self, tls: bool) -> Result<Vec<(String, u16)>, FleetError> {
        let reply: Value = self.query(OP_HEARTBEAT, redis::cmd("CLUSTER").arg("SHARDS")).await?;
        Ok(shard_nodes(&reply, tls))
    }
}

/// Candidates the subscriber keeps at most, seeds included: a round over
/// dead ones costs a connect attempt each (up to `engine_timeout_ms`)
/// before the heartbeat's wait, and any reachable node of a Cluster hears
/// every PUBLISH, so a larger cluster gains nothing from more.
const MAX_CANDIDATES: usize = 64;

/// Where the subscriber may subscribe: the configured seeds, then the
/// nodes learned from the Cluster, one per address, with when each last
/// failed. Sans-IO: the subscriber asks and connects, this only orders.
struct Candidates {
    /// Seeds first (config order), then learned nodes; at most [`MAX_CANDIDATES`].
    list: Vec<redis::ConnectionInfo>,
    /// How many of `list` are seeds (kept when the cluster's list changes).
    seeds: usize,
    /// Address → the failure count at its last failure: a logical clock,
    /// so the order is the same for the same history.
    failed: std::collections::HashMap<String, u64>,
    failures: u64,
}

impl Candidates {
    fn new(seeds: Vec<redis::ConnectionInfo>) -> Candidates {
        let mut c = Candidates { list: Vec::new(), seeds: 0, failed: std::collections::HashMap::new(), failures: 0 };
        for s in seeds {
            c.push(s);
        }
        c.seeds = c.list.len();
        c
    }

    fn push(&mut self, info: redis::ConnectionInfo) {
        if self.list.len() < MAX_CANDIDATES && !self.list.iter().any(|i| i.addr() == info.addr()) {
            self.list.push(info);
        }
    }

    /// True when the first seed speaks TLS: learned nodes are asked for their TLS port.
    fn tls(&self) -> bool {
        self.list.first().is_some_and(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }))
    }

    /// The Cluster's nodes now: they replace the ones learned before. Each
    /// is the first seed's URL with only host and port changed (scheme,
    /// credentials, TLS settings, protocol kept).
    fn learn(&mut self, nodes: &[(String, u16)]) {
        self.list.truncate(self.seeds);
        let Some(template) = self.list.first().cloned() else { return };
        for (host, port) in nodes {
            if let Some(info) = at(&template, host, *port) {
                self.push(info);
            }
        }
        // Failures of nodes no longer listed would only grow the map.
        let list = &self.list;
        self.failed.retain(|a, _| list.iter().any(|i| i.addr().to_string() == *a));
    }

    /// The order of the next round: never failed first (seeds, then
    /// learned, as listed), then by how long ago each last failed.
    fn order(&self) -> Vec<redis::ConnectionInfo> {
        let mut l: Vec<(u64, &redis::ConnectionInfo)> = self.list.iter().map(|i| (self.failed.get(&i.addr().to_string()).copied().unwrap_or(0), i)).collect();
        l.sort_by_key(|(f, _)| *f);
        l.into_iter().map(|(_, i)| i.clone()).collect()
    }

    fn failed(&mut self, addr: &redis::ConnectionAddr) {
        self.failures += 1;
        self.failed.insert(addr.to_string(), self.failures);
    }
}

/// `template` at `host:port`; None for a Unix socket seed (a Cluster's
/// nodes are TCP addresses).
fn at(template: &redis::ConnectionInfo, host: &str, port: u16) -> Option<redis::ConnectionInfo> {
    let mut addr = template.addr().clone();
    match &mut addr {
        redis::ConnectionAddr::Tcp(h, p) | redis::ConnectionAddr::TcpTls { host: h, port: p, .. } => {
            *h = host.to_string();
            *p = port;
        }
        _ => return None,
    }
    Some(template.clone().set_addr(addr))
}

/// The nodes of a `CLUSTER SHARDS` reply (RESP2: flat name/value arrays;
/// RESP3: maps), masters and replicas: `endpoint` (the address the
/// cluster tells clients to use; `ip` when unknown) and `port`, or
/// `tls-port` for a TLS seed. Nodes the cluster marks failed are left
/// out: the cluster bus no longer brings them its PUBLISHes.
fn shard_nodes(reply: &Value, tls: bool) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    let Value::Array(shards) = reply else { return out };
    for shard in shards {
        let Some(Value::Array(nodes)) = field(shard, "nodes") else { continue };
        for n in nodes {
            if field(n, "health").and_then(text).is_some_and(|h| h.starts_with("fail")) {
                continue;
            }
            let host = [field(n, "endpoint"), field(n, "ip")].into_iter().flatten().filter_map(text).find(|h| !h.is_empty() && *h != "?");
            let port = if tls { field(n, "tls-port").or_else(|| field(n, "port")) } else { field(n, "port") };
            let port = port.and_then(|p| match p {
                Value::Int(i) => u16::try_from(*i).ok(),
                other => text(other).and_then(|t| t.parse().ok()),
            });
            if let (Some(host), Some(port)) = (host, port.filter(|p| *p != 0)) {
                out.push((host.to_string(), port));
            }
        }
    }
    out
}

/// `name`'s value in a RESP3 map or a RESP2 flat name/value array.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let is = |k: &Value| text(k) == Some(name);
    match v {
        Value::Map(m) => m.iter().find(|(k, _)| is(k)).map(|(_, v)| v),
        Value::Array(a) => a.chunks(2).find(|p| p.first().is_some_and(is)).and_then(|p| p.get(1)),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// Subscribes on `info` and stays there while it answers PING. Ok when it
/// was subscribed and then lost; Err when it never was.
async fn subscribe_on(eng: &Arc<Eng>, info: &redis::ConnectionInfo, ctl: &tokio::sync::mpsc::Sender<Control>) -> Result<(), String> {
    let rs = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.clone().set_redis_settings(rs)).map_err(|e| e.to_string())?;
    let node = info.addr().to_string();
    let me = eng.fleet.node_id.clone();
    let mesh = eng.mesh.clone();
    let ctl = ctl.clone();
    let sender = move |p: redis::PushInfo| -> Result<(), redis::aio::SendError> {
        if p.kind == redis::PushKind::Message {
            if let Some(Value::BulkString(b)) = p.data.get(1) {
                on_notification(&me, &mesh, &ctl, b);
            }
        }
        Ok(())
    };
    let t = eng.timeout;
    let cfg = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(t)).set_response_timeout(Some(t)).set_push_sender(sender);
    let mut c = match tokio::time::timeout(t, client.get_multiplexed_async_connection_with_config(&cfg)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("connect timed out".into()),
    };
    match tokio::time::timeout(t, c.subscribe(vec!["rg:n".to_string(), own_channel(&eng.fleet.node_id)])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("SUBSCRIBE timed out".into()),
    }
    tracing::info!(node = %node, "fleet subscriber: subscribed to rg:n and its own channel");
    let hb = Duration::from_millis(eng.fleet.cfg.heartbeat_ms);
    loop {
        tokio::time::sleep(hb).await;
        if !matches!(tokio::time::timeout(t, redis::cmd("PING").query_async::<Value>(&mut c)).await, Ok(Ok(_))) {
            tracing::warn!(node = %node, "fleet subscriber: connection lost; subscribing again (gap repair covers the meantime)");
            return Ok(());
        }
    }
}

/// One message of `rg:n` (`scripts.rs`): hands it to the user's home core,
/// or a kick to the engine thread.
fn on_notification(me: &str, mesh: &Mesh, ctl: &tokio::sync::mpsc::Sender<Control>, b: &[u8]) {
    let mut c = Cursor(b);
    let Some(kind) = c.word() else { return };
    let Some(node) = c.word() else { return };
    if node == me.as_bytes() {
        return;
    }
    let text = |w: &[u8]| std::str::from_utf8(w).ok().map(String::from);
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
        b"X" => {
            let (Some(asker), Some(req)) = (text(node), c.word().and_then(text)) else { return };
            let Some(n) = c.num() else { return };
            let Some(user) = c.take(n as usize).and_then(|u| std::str::from_utf8(u).ok()) else { return };
            let _ = ctl.try_send(Control::Kick { asker, req, user: Arc::from(user) });
        }
        b"C" => {
            let Some(replier) = text(node) else { return };
            let (Some(asker), Some(req)) = (c.word(), c.word().and_then(text)) else { return };
            let Some(closed) = std::str::from_utf8(c.rest()).ok().and_then(|n| n.parse().ok()) else { return };
            if asker == me.as_bytes() {
                let _ = ctl.try_send(Control::Kicked { req, node: replier, closed });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

    fn info(url: &str) -> ConnectionInfo {
        url.into_connection_info().unwrap()
    }

    fn addrs(l: &[ConnectionInfo]) -> Vec<String> {
        l.iter().map(|i| i.addr().to_string()).collect()
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// One node of a RESP2 `CLUSTER SHARDS` reply: flat name/value pairs.
    fn node2(pairs: &[(&str, Value)]) -> Value {
        Value::Array(pairs.iter().flat_map(|(k, v)| [bulk(k), v.clone()]).collect())
    }

    #[test]
    fn learned_nodes_keep_the_seeds_scheme_credentials_and_tls() {
        let mut c = Candidates::new(vec![info("redis://ann:secret@seed:7000/3")]);
        c.learn(&[("10.0.0.2".into(), 7001)]);
        let l = c.order();
        assert_eq!(addrs(&l), ["seed:7000", "10.0.0.2:7001"]);
        assert_eq!((l[1].redis_settings().username(), l[1].redis_settings().password(), l[1].redis_settings().db()), (Some("ann"), Some("secret"), 3));
        assert!(matches!(l[1].addr(), ConnectionAddr::Tcp(..)));
        assert!(!c.tls());
        // A TLS seed (this build parses no rediss:// URL: built by hand).
        let tls = info("redis://ann:secret@seed:7000").set_addr(ConnectionAddr::TcpTls { host: "seed".into(), port: 7000, insecure: true, tls_params: None });
        let mut c = Candidates::new(vec![tls]);
        assert!(c.tls());
        c.learn(&[("10.0.0.3".into(), 7443)]);
        let l = c.order();
        assert!(matches!(l[1].addr(), ConnectionAddr::TcpTls { host, port: 7443, insecure: true, .. } if host == "10.0.0.3"), "{:?}", l[1].addr());
        assert_eq!(l[1].redis_settings().password(), Some("secret"));
        // A Unix socket seed learns nothing (a Cluster's nodes are TCP).
        let mut c = Candidates::new(vec![info("redis+unix:///tmp/r.sock")]);
        c.learn(&[("10.0.0.2".into(), 7001)]);
        assert_eq!(c.order().len(), 1);
    }

    #[test]
    fn candidates_are_bounded_deduplicated_and_follow_the_cluster() {
        let mut c = Candidates::new(vec![info("redis://a:1"), info("redis://a:1"), info("redis://b:2")]);
        assert_eq!(addrs(&c.order()), ["a:1", "b:2"]);
        let many: Vec<(String, u16)> = (0..200).map(|i| ("10.0.0.1".to_string(), 1000 + i)).chain([("a".to_string(), 1)]).collect();
        c.learn(&many);
        let l = c.order();
        assert_eq!(l.len(), MAX_CANDIDATES);
        assert_eq!(addrs(&l[..3]), ["a:1", "b:2", "10.0.0.1:1000"]);
        // A later list replaces the learned part, not the seeds; failures
        // of nodes that left are forgotten.
        c.failed(l[2].addr());
        c.learn(&[("c".into(), 3)]);
        assert_eq!(addrs(&c.order()), ["a:1", "b:2", "c:3"]);
        assert!(!c.failed.contains_key("10.0.0.1:1000"));
    }

    #[test]
    fn the_most_recently_failed_are_tried_last() {
        let mut c = Candidates::new(vec![info("redis://a:1")]);
        c.learn(&[("b".into(), 2), ("c".into(), 3)]);
        let a = c.order()[0].addr().clone();
        c.failed(&a);
        assert_eq!(addrs(&c.order()), ["b:2", "c:3", "a:1"]);
        let b = c.order()[0].addr().clone();
        c.failed(&b);
        assert_eq!(addrs(&c.order()), ["c:3", "a:1", "b:2"]);
        // Learning again keeps what failed when.
        c.learn(&[("b".into(), 2), ("c".into(), 3)]);
        assert_eq!(addrs(&c.order()), ["c:3", "a:1", "b:2"]);
    }

    #[test]
    fn cluster_shards_replies_in_both_protocols() {
        let up = |ip: &str, port: i64| node2(&[("id", bulk("x")), ("port", Value::Int(port)), ("ip", bulk(ip)), ("endpoint", bulk(ip)), ("role", bulk("master")), ("health", bulk("online"))]);
        let shard = |nodes: Vec<Value>| Value::Array(vec![bulk("slots"), Value::Array(vec![Value::Int(0), Value::Int(5460)]), bulk("nodes"), Value::Array(nodes)]);
        let failed = node2(&[("port", Value::Int(7002)), ("ip", bulk("10.0.0.2")), ("endpoint", bulk("10.0.0.2")), ("health", bulk("fail"))]);
        // No endpoint known ("?"): the ip; a TLS port only for a TLS seed.
        let replica = node2(&[("port", Value::Int(7003)), ("tls-port", Value::Int(7443)), ("ip", bulk("10.0.0.3")), ("endpoint", bulk("?")), ("health", bulk("loading"))]);
        let reply = Value::Array(vec![shard(vec![up("10.0.0.1", 7001), failed]), shard(vec![replica])]);
        assert_eq!(shard_nodes(&reply, false), [("10.0.0.1".to_string(), 7001), ("10.0.0.3".to_string(), 7003)]);
        assert_eq!(shard_nodes(&reply, true), [("10.0.0.1".to_string(), 7001), ("10.0.0.3".to_string(), 7443)]);
        // RESP3: maps.
        let node3 = Value::Map(vec![(bulk("port"), Value::Int(7001)), (bulk("endpoint"), bulk("redis-1.local")), (bulk("health"), bulk("online"))]);
        let reply3 = Value::Array(vec![Value::Map(vec![(bulk("slots"), Value::Array(vec![])), (bulk("nodes"), Value::Array(vec![node3]))])]);
        assert_eq!(shard_nodes(&reply3, false), [("redis-1.local".to_string(), 7001)]);
        // Anything else: nothing learned, no panic.
        assert!(shard_nodes(&Value::Nil, false).is_empty());
        assert!(shard_nodes(&Value::Array(vec![bulk("nodes"), Value::Int(3)]), false).is_empty());
    }
}
