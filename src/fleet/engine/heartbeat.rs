//! The engine thread's heartbeat: every `heartbeat_ms` it records this
//! node and lists the live ones (the route), renews the msg_id index
//! lease, checks the engine's durability settings once, and completes the
//! group sends a dead node left unfinished.
//!
//! Separate from `engine.rs` because it runs on its own timer, not per
//! request, and is what decides readiness (`engine_down`, /readyz).

use super::*;

impl Eng {
    /// Takes or renews this node's msg_id index (`fleet_msg_id`), every
    /// heartbeat. While none is held the node mints no msg_id (SENDACK 5).
    async fn renew_lease(&self, ttl_ms: u64) {
        let asked = Instant::now();
        let held = self.fleet.node_index().map_or(-1, |i| i as i64);
        let mut inv = self.scripts.lease.key("rg:{nodes}:x");
        inv.arg(&*self.fleet.node_id).arg(ttl_ms).arg(held).arg(1u64 << NODE_INDEX_BITS);
        match self.invoke::<i64>(OP_HEARTBEAT, &mut inv).await {
            Ok(i) if i >= 0 => {
                if held != i {
                    tracing::info!(index = i, "fleet: msg_id node index leased");
                }
                self.fleet.set_lease(i as u64, asked, ttl_ms);
            }
            Ok(_) => tracing::error!("fleet: every msg_id node index is held by a live node (at most {} nodes): SENDs get SENDACK 5", 1u64 << NODE_INDEX_BITS),
            Err(e) => tracing::debug!(error = %e, "fleet: msg_id index lease not renewed"),
        }
    }

    /// Completes group sends whose claim is older than `age_ms` and still
    /// pending: the node that claimed them died (or its request failed)
    /// before every copy was appended. Appends are idempotent by msg_id,
    /// so a completion racing a client's retry still stores one copy per
    /// member. Returns how many were completed.
    async fn sweep_intents(&self, age_ms: u64) -> Result<usize, FleetError> {
        let cutoff = wall_ms().saturating_sub(age_ms);
        // The sweep's reads count as the heartbeat's (they run with it).
        let stale: Vec<String> = self.query(OP_HEARTBEAT, redis::cmd("ZRANGEBYSCORE").arg(INTENTS).arg("-inf").arg(cutoff).arg("LIMIT").arg(0).arg(32)).await?;
        let mut done = 0;
        for intent in stale {
            let Some((sender, device, cmid)) = rules::parse_intent(&intent) else {
                self.forget_intent(&intent).await;
                continue;
            };
            let Ok(cmid) = cmid.parse::<u64>() else {
                self.forget_intent(&intent).await;
                continue;
            };
            let dkey = scripts::dedup_key(sender, device, cmid);
            let Ok(rec) = self.lookup(sender, device, cmid).await else { continue };
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
                let rec = rules::done_record(r.msg_id, r.ts);
                let _: i64 = self.invoke(OP_DONE, self.scripts.done.key(&dkey).arg(cmid).arg(rec)).await?;
                tracing::info!(sender, device, client_msg_id = cmid, msg_id = r.msg_id, members = targets.len(), "completed a group send a node left unfinished");
                done += 1;
            }
            self.forget_intent(&intent).await;
        }
        Ok(done)
    }

    /// The dedup record of a stale intent, looked up as a retry would
    /// (`scripts::claim` with claim `0`): the bucket, else the previous
    /// version's hash, whose pending record is copied into the bucket so
    /// that the completion's `DONE` marks it (an intent an old node left
    /// during a rolling upgrade is completed once, like any other).
    async fn lookup(&self, sender: &str, device: &str, cmid: u64) -> Result<Option<Vec<u8>>, FleetError> {
        let mut inv = self.claim_call(sender, device, cmid, 0, 0, "", b"", false);
        // `m` (muted, no record) reads as no record: nothing to complete.
        Ok(self.invoke::<Option<Vec<u8>>>(OP_HEARTBEAT, &mut inv).await?.filter(|r| r != b"m"))
    }
}

/// Every `heartbeat_ms`: record this node, list the live ones, readiness.
pub(super) async fn heartbeat(eng: Arc<Eng>) {
    let hb = Duration::from_millis(eng.fleet.cfg.heartbeat_ms);
    let ttl = eng.fleet.cfg.heartbeat_ms * 3;
    let mut durability_checked = false;
    let mut seeded = false;
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
                eng.renew_lease(ttl).await;
                if !seeded {
                    seeded = eng.seed_groups().await;
                }
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
                // Targeted notifications once every live node hears its own channel.
                eng.targeted.store(list.chunks(2).all(|p| p.get(1).is_some_and(|i| i.split(' ').nth(3) == Some(OWN_CHANNEL))), Relaxed);
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
