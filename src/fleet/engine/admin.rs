//! The admin API's operations on the engine: groups (their members, the
//! compare-and-set member edit, the one-time seed from `[groups]`), mutes,
//! the user view (head, oldest, presence) and idempotency keys.
//!
//! Separate from `engine.rs` because none of it is on a device's path:
//! these are the operator's reads and writes (a group SEND only reads the
//! members through `group_get`), answered within `engine_timeout_ms`.

use super::*;

impl Eng {
    /// A group's members; None when absent. The raw value is returned too
    /// (a member edit compares and sets against it).
    async fn group_raw(&self, group: &str) -> Result<Option<(String, Vec<String>)>, FleetError> {
        let v: Option<String> = self.query(OP_GROUP, redis::cmd("GET").arg(scripts::group_key(group))).await?;
        match v {
            None => Ok(None),
            Some(raw) => {
                let m: Vec<String> =
                    serde_json::from_str(&raw).map_err(|e| FleetError::Engine(format!("unreadable group {group:?}: {e}")))?;
                Ok(Some((raw, m)))
            }
        }
    }

    pub(super) async fn group_get(&self, group: &str) -> Result<Option<Vec<String>>, FleetError> {
        Ok(self.group_raw(group).await?.map(|(_, m)| m))
    }

    /// The admin API's operations (module docs, "Groups, mutes, ...").
    pub(super) async fn admin(&self, op: AdminOp) -> Result<AdminAnswer, FleetError> {
        match op {
            AdminOp::GroupGet(g) => Ok(AdminAnswer::Members(self.group_get(&g).await?)),
            AdminOp::GroupPut(g, members) => {
                let raw = serde_json::to_string(&members).unwrap_or_else(|_| "[]".into());
                let _: () = self.query(OP_GROUP, redis::cmd("SET").arg(scripts::group_key(&g)).arg(raw)).await?;
                Ok(AdminAnswer::Members(Some(members)))
            }
            AdminOp::GroupEdit { group, add, remove } => {
                // Compare and set: another node's edit in between makes
                // this one start over on the newer list (bounded by the
                // caller's engine_timeout_ms).
                loop {
                    let Some((raw, cur)) = self.group_raw(&group).await? else { return Ok(AdminAnswer::Members(None)) };
                    let next = edit_members(cur, &add, &remove);
                    let new = serde_json::to_string(&next).unwrap_or_else(|_| "[]".into());
                    let set: i64 =
                        self.invoke(OP_GROUP, self.scripts.group_cas.key(scripts::group_key(&group)).arg(&raw).arg(&new)).await?;
                    if set == 1 {
                        return Ok(AdminAnswer::Members(Some(next)));
                    }
                }
            }
            AdminOp::GroupDelete(g) => {
                let n: i64 = self.query(OP_GROUP, redis::cmd("DEL").arg(scripts::group_key(&g))).await?;
                Ok(AdminAnswer::Deleted(n > 0))
            }
            AdminOp::Mute { user, until_ms } => {
                let key = scripts::mute_key(&user);
                if until_ms > wall_ms() {
                    // Expires by itself when the mute ends.
                    let _: () = self.query(OP_MUTE, redis::cmd("SET").arg(&key).arg(until_ms).arg("PXAT").arg(until_ms)).await?;
                } else {
                    let _: i64 = self.query(OP_MUTE, redis::cmd("DEL").arg(&key)).await?;
                }
                Ok(AdminAnswer::Done)
            }
            AdminOp::User(user) => Ok(AdminAnswer::User(self.user_view(&user).await?)),
            AdminOp::IdemClaim { key, pending, ttl_ms } => {
                let v: Option<String> =
                    self.invoke(OP_IDEM, self.scripts.idem_claim.key(scripts::idem_key(&key)).arg(&pending).arg(ttl_ms.max(1))).await?;
                Ok(AdminAnswer::Idem(v))
            }
            AdminOp::Kick(user) => Ok(AdminAnswer::Kicked(self.kick(&user).await?)),
            AdminOp::IdemFinish { key, pending, done, ttl_ms } => {
                let _: i64 = self
                    .invoke(OP_IDEM, self.scripts.idem_finish.key(scripts::idem_key(&key)).arg(&pending).arg(&done).arg(ttl_ms.max(1)))
                    .await?;
                Ok(AdminAnswer::Done)
            }
        }
    }

    /// The user's record (their slot) and the live nodes (the nodes' slot),
    /// read together.
    async fn user_view(&self, user: &str) -> Result<UserView, FleetError> {
        let ttl = self.fleet.cfg.heartbeat_ms * 3;
        let keys = ["h", "e", "p"].map(|k| format!("rg:{{{user}}}:{k}"));
        let mut pinv = self.scripts.presence.key(&keys[0]);
        pinv.key(&keys[1]).key(&keys[2]).key(scripts::mute_key(user));
        let mut linv = self.scripts.live.key("rg:{nodes}:z");
        linv.arg(ttl);
        let (p, live) = futures_util::future::join(self.invoke::<Value>(OP_PRESENCE, &mut pinv), self.invoke::<Vec<String>>(OP_PRESENCE, &mut linv)).await;
        let (p, live) = (p?, live?);
        let Value::Array(a) = p else { return Err(FleetError::Engine("unexpected presence reply".into())) };
        let now = wall_ms();
        let muted = int(a.get(2));
        let mut view = UserView {
            head_seq: int(a.first()),
            oldest_seq: int(a.get(1)),
            muted_until_ms: if muted > now { muted } else { 0 },
            devices: Vec::new(),
        };
        if let Some(Value::Array(h)) = a.get(3) {
            for pair in h.chunks(2) {
                let (Some(Value::BulkString(d)), Some(Value::BulkString(r))) = (pair.first(), pair.get(1)) else { continue };
                let (Ok(d), Ok(r)) = (std::str::from_utf8(d), std::str::from_utf8(r)) else { continue };
                if let Some(rec) = parse_presence(d, r, &live) {
                    view.devices.push(rec);
                }
            }
        }
        view.devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(view)
    }

    /// Once per engine: the config's `[groups]` seed an engine no node has
    /// seeded yet (like an empty data directory on one node); afterwards
    /// the engine's state wins. True when done (or nothing to do).
    pub(super) async fn seed_groups(&self) -> bool {
        let first: Result<Option<String>, _> =
            self.query(OP_GROUP, redis::cmd("SET").arg("rg:{groups}:seeded").arg(&*self.fleet.node_id).arg("NX")).await;
        match first {
            Ok(Some(_)) => {
                for (g, m) in &self.seed_groups {
                    let raw = serde_json::to_string(m).unwrap_or_else(|_| "[]".into());
                    let r: Result<Option<String>, _> =
                        self.query(OP_GROUP, redis::cmd("SET").arg(scripts::group_key(g)).arg(raw).arg("NX")).await;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, group = %g, "cannot seed a group in the fleet engine");
                    }
                }
                if !self.seed_groups.is_empty() {
                    tracing::info!(groups = self.seed_groups.len(), "seeded the fleet engine's groups from [groups]");
                }
                true
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }
}

/// A member edit: `add` appended (in order, once), then `remove` taken out.
fn edit_members(cur: Vec<String>, add: &[String], remove: &[String]) -> Vec<String> {
    let gone: std::collections::HashSet<&String> = remove.iter().collect();
    let mut out: Vec<String> = cur.into_iter().filter(|m| !gone.contains(m)).collect();
    let mut have: std::collections::HashSet<String> = out.iter().cloned().collect();
    for a in add {
        if !gone.contains(a) && have.insert(a.clone()) {
            out.push(a.clone());
        }
    }
    out
}

/// A presence record `node connected_at_ms acked_seq online [remote]`;
/// online only while its node is in `live`.
fn parse_presence(device: &str, rec: &str, live: &[String]) -> Option<DeviceRecord> {
    let mut w = rec.split(' ');
    let node = w.next()?.to_string();
    let connected_at_ms = w.next()?.parse().ok()?;
    let acked_seq = w.next()?.parse().ok()?;
    let connected = w.next()? == "1";
    let remote = w.next().filter(|r| !r.is_empty() && *r != "-").map(String::from);
    let online = connected && live.iter().any(|n| *n == node);
    Some(DeviceRecord { device_id: device.to_string(), node, connected_at_ms, acked_seq, online, remote })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_edits_and_presence_records() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(edit_members(s(&["a", "b"]), &s(&["c", "a", "d"]), &s(&["b", "d"])), s(&["a", "c"]));
        let live = s(&["n1", "n2"]);
        let r = parse_presence("d1", "n2 100 7 1 127.0.0.1:5", &live).unwrap();
        assert_eq!((r.node.as_str(), r.connected_at_ms, r.acked_seq, r.online, r.remote.as_deref()), ("n2", 100, 7, true, Some("127.0.0.1:5")));
        assert!(!parse_presence("d1", "n3 100 7 1 -", &live).unwrap().online, "its node is not live");
        let old = parse_presence("d1", "n1 100 7 0", &live).unwrap();
        assert!(!old.online && old.remote.is_none(), "a record from before remote was kept");
    }
}
