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
/// thread). A PING every heartbeat notices a dead connection; then
/// it subscribes again on the next seed URL that answers (a Redis Cluster
/// broadcasts every PUBLISH to all of its nodes, so any reachable one will
/// do, and a dead shard only moves the subscriber). What is published
/// while it is away is found by the heartbeat's gap repair.
pub(super) async fn subscriber(eng: Arc<Eng>, ctl: tokio::sync::mpsc::Sender<Control>) {
    let seeds = eng.fleet.cfg.redis.len().max(1);
    let hb = Duration::from_millis(eng.fleet.cfg.heartbeat_ms);
    let mut seed = 0;
    let mut failed = 0;
    loop {
        match subscribe_on(&eng, seed % seeds, &ctl).await {
            Ok(()) => failed = 0,
            Err(e) => {
                tracing::debug!(seed = seed % seeds, error = %e, "fleet subscriber: seed not reachable");
                failed += 1;
            }
        }
        seed += 1;
        if failed >= seeds {
            // Every seed refused: wait a heartbeat before the next round.
            failed = 0;
            tokio::time::sleep(hb).await;
        }
    }
}

/// Subscribes on seed URL number `seed` and stays there while it answers
/// PING. Ok when it was subscribed and then lost; Err when it never was.
async fn subscribe_on(eng: &Arc<Eng>, seed: usize, ctl: &tokio::sync::mpsc::Sender<Control>) -> Result<(), String> {
    let url = eng.fleet.cfg.redis.get(seed).ok_or("no seed URL")?;
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|e| e.to_string())?;
    let rs = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(rs)).map_err(|e| e.to_string())?;
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
    tracing::info!(seed, "fleet subscriber: subscribed to rg:n and its own channel");
    let hb = Duration::from_millis(eng.fleet.cfg.heartbeat_ms);
    loop {
        tokio::time::sleep(hb).await;
        if !matches!(tokio::time::timeout(t, redis::cmd("PING").query_async::<Value>(&mut c)).await, Ok(Ok(_))) {
            tracing::warn!(seed, "fleet subscriber: connection lost; subscribing again (gap repair covers the meantime)");
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
