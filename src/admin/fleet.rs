//! The admin API in fleet mode (FLEET.md point 7): groups, mutes, idempotency keys and presence are the engine's, so the API on any node reads and changes the same state.
//!
//! Each call goes to the node's engine thread ([`Fleet::admin`]), bounded
//! by `max_engine_inflight` and answered within `engine_timeout_ms`; an
//! engine that is down, slow or hung makes it `503 unavailable`, never a
//! hang. Nothing here touches the local `<data_dir>/admin/` files: in fleet
//! mode the engine is the durable store (as it is for inboxes).

use std::sync::Arc;

use serde_json::{json, Value};

use super::api::{fail, now_ms, Answer, CORE_WAIT};
use super::Ctx;
use crate::fleet::{AdminAnswer, AdminOp, Fleet, FleetError, UserView};
use crate::runtime::core::admin::{AdminCmd, PresenceView};
use crate::runtime::mesh::home_core;

/// How long a publish's pending idempotency claim lives: the longest a
/// publish can take here (its wait on the cores, and the engine calls
/// around it). Should this node die mid-publish, the key is free again
/// after this and a retry publishes afresh.
fn pending_ttl_ms(f: &Fleet) -> u64 {
    CORE_WAIT.as_millis() as u64 + 2 * f.cfg.engine_timeout_ms
}

fn engine_err(e: FleetError) -> (u16, String) {
    (503, format!("fleet engine: {e}"))
}

fn run(f: &Fleet, op: AdminOp) -> Result<AdminAnswer, (u16, String)> {
    f.admin(op).map_err(engine_err)
}

fn unexpected<T>() -> Result<T, (u16, String)> {
    fail(503, "fleet engine: unexpected answer")
}

/// A group's members from the engine; None when absent.
pub(super) fn group(f: &Fleet, g: &str) -> Result<Option<Vec<String>>, (u16, String)> {
    match run(f, AdminOp::GroupGet(g.to_string()))? {
        AdminAnswer::Members(m) => Ok(m),
        _ => unexpected(),
    }
}

pub(super) fn put_group(f: &Fleet, g: &str, members: Vec<String>) -> Answer {
    match run(f, AdminOp::GroupPut(g.to_string(), members))? {
        AdminAnswer::Members(Some(m)) => Ok(json!({"group": g, "members": m})),
        _ => unexpected(),
    }
}

pub(super) fn get_group(f: &Fleet, g: &str) -> Answer {
    match group(f, g)? {
        Some(m) => Ok(json!({"group": g, "members": m})),
        None => fail(404, format!("no group {g:?}")),
    }
}

pub(super) fn edit_group(f: &Fleet, g: &str, add: Vec<String>, remove: Vec<String>) -> Answer {
    match run(f, AdminOp::GroupEdit { group: g.to_string(), add, remove })? {
        AdminAnswer::Members(Some(m)) => Ok(json!({"group": g, "members": m})),
        AdminAnswer::Members(None) => fail(404, format!("no group {g:?}")),
        _ => unexpected(),
    }
}

pub(super) fn delete_group(f: &Fleet, g: &str) -> Answer {
    match run(f, AdminOp::GroupDelete(g.to_string()))? {
        AdminAnswer::Deleted(true) => Ok(json!({"group": g, "deleted": true})),
        AdminAnswer::Deleted(false) => fail(404, format!("no group {g:?}")),
        _ => unexpected(),
    }
}

pub(super) fn mute(f: &Fleet, user: &str, until_ms: u64) -> Answer {
    let active = until_ms > now_ms();
    match run(f, AdminOp::Mute { user: user.to_string(), until_ms })? {
        AdminAnswer::Done => Ok(json!({"user": user, "until_ms": if active { until_ms } else { 0 }})),
        _ => unexpected(),
    }
}

/// `GET /v1/users/{u}`: every device any node has seen, with `node`;
/// `online` only while the record says connected and that node is live.
/// Devices connected to this node also get their live cursor and address
/// from their core (another node's device shows its cursor as of its
/// CONNECT, or of its disconnect).
pub(super) fn presence(ctx: &Ctx, f: &Fleet, user: &str) -> Answer {
    let view: UserView = match run(f, AdminOp::User(user.to_string()))? {
        AdminAnswer::User(v) => v,
        _ => return unexpected(),
    };
    let local: Option<PresenceView> = match ctx.mesh() {
        Some(mesh) if view.devices.iter().any(|d| d.online && d.node == *f.node_id) => {
            let (tx, rx) = std::sync::mpsc::channel();
            let u: Arc<str> = Arc::from(user);
            mesh[home_core(user, mesh.len())].post(crate::runtime::mesh::CoreMsg::Admin(Box::new(AdminCmd::Presence { user: u, reply: tx })));
            rx.recv_timeout(CORE_WAIT).ok()
        }
        _ => None,
    };
    let devices: Vec<Value> = view
        .devices
        .iter()
        .map(|d| {
            let here = local
                .as_ref()
                .filter(|_| d.node == *f.node_id)
                .and_then(|p| p.devices.iter().find(|x| &*x.device_id == d.device_id && x.online));
            json!({
                "device_id": d.device_id,
                "node": d.node,
                "online": d.online,
                "transport": ctx.metrics.transport,
                "remote": here.and_then(|h| h.remote.map(|a| a.to_string())).or_else(|| d.remote.clone()),
                "connected_at_ms": d.connected_at_ms,
                "acked_seq": here.map_or(d.acked_seq, |h| h.acked_seq.max(d.acked_seq)),
            })
        })
        .collect();
    Ok(json!({
        "user": user,
        "head_seq": view.head_seq,
        "oldest_seq": view.oldest_seq,
        "muted_until_ms": view.muted_until_ms,
        "devices": devices,
    }))
}

/// What a publish's idempotency key found.
pub(super) enum Idem {
    /// Claimed now by this record: publish, then [`idem_finish`].
    Claimed(String),
    /// Answer this (the first answer, or a 409).
    Answer(Answer),
}

/// Claims `key` for a publish whose canonical body hashes to `hash`, or
/// finds the first publish's answer (any node's).
pub(super) fn idem_claim(f: &Fleet, key: &str, hash: &str) -> Result<Idem, (u16, String)> {
    let mut nonce = [0u8; 8];
    let _ = getrandom::getrandom(&mut nonce);
    let pending = format!("p {hash} {} {}", f.node_id, hex::encode(nonce));
    let found = match run(f, AdminOp::IdemClaim { key: key.to_string(), pending: pending.clone(), ttl_ms: pending_ttl_ms(f) })? {
        AdminAnswer::Idem(found) => found,
        _ => return unexpected(),
    };
    let Some(rec) = found else { return Ok(Idem::Claimed(pending)) };
    let mut w = rec.splitn(3, ' ');
    let (kind, h, rest) = (w.next().unwrap_or(""), w.next().unwrap_or(""), w.next().unwrap_or(""));
    if h != hash {
        return Ok(Idem::Answer(fail(409, format!("idempotency_key {key:?} was used with a different body"))));
    }
    match kind {
        "d" => match serde_json::from_str::<Value>(rest) {
            Ok(v) => Ok(Idem::Answer(Ok(v))),
            Err(e) => fail(503, format!("fleet engine: unreadable idempotency record: {e}")),
        },
        _ => Ok(Idem::Answer(fail(409, format!("a publish with idempotency_key {key:?} is in progress")))),
    }
}

/// Replaces this node's pending claim with the publish's answer (or frees
/// the key when it failed: a retry must be tried afresh).
pub(super) fn idem_finish(ctx: &Ctx, f: &Fleet, key: &str, pending: String, hash: &str, answer: Option<&Value>) {
    let done = answer.map_or_else(String::new, |a| format!("d {hash} {a}"));
    let ttl_ms = ctx.cfg.admin.idempotency_ttl_s.saturating_mul(1000);
    if let Err(e) = f.admin(AdminOp::IdemFinish { key: key.to_string(), pending, done, ttl_ms }) {
        // Stored and delivered (or not); only the retry protection is
        // missing until the pending claim expires.
        tracing::error!(error = %e, key, "cannot record an idempotency key in the fleet engine");
    }
}

/// `DELETE /v1/users/{u}/connections` on the other nodes: how many
/// connections they closed (this node's own are closed by its core).
pub(super) fn kick(f: &Fleet, user: &str) -> Result<u64, (u16, String)> {
    match run(f, AdminOp::Kick(user.to_string()))? {
        AdminAnswer::Kicked(n) => Ok(n),
        _ => unexpected(),
    }
}
