//! The admin API's routes (ADMIN.md): JSON in and out, each handler answering one endpoint by asking the owning core(s) through their mailboxes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;

use super::state::IdemRecord;
use super::Ctx;
use crate::http::{Request, Response};
use crate::metrics;
use crate::runtime::core::admin::{AdminCmd, PublishCmd};
use crate::runtime::mesh::{home_core, CoreMsg};

/// How long a request waits for the cores (a publish waits for its fsync).
pub(super) const CORE_WAIT: Duration = Duration::from_secs(10);
/// Most recipients of one publish (a larger fan-out is a group's job).
const MAX_RECIPIENTS: usize = 10_000;
/// Most members of one group.
const MAX_GROUP_MEMBERS: usize = 100_000;
/// Most groups.
const MAX_GROUPS: usize = 100_000;
/// Ids (users, groups, keys) are protocol strings: 1..=255 bytes.
const MAX_ID: usize = 255;

pub(super) fn error_response(status: u16, message: &str) -> Response {
    let code = match status {
        400 | 431 | 505 | 501 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "too_large",
        429 => "rate_limited",
        _ => "unavailable",
    };
    Response::json(status, &json!({"error": {"code": code, "message": message}}))
}

pub(super) type Answer = Result<Value, (u16, String)>;

pub(super) fn fail<T>(status: u16, message: impl Into<String>) -> Result<T, (u16, String)> {
    Err((status, message.into()))
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(super) fn handle(ctx: &Ctx, req: &Request) -> Response {
    ctx.metrics.admin_requests.fetch_add(1, Relaxed);
    let path = req.path().to_string();
    let method = if req.method == "HEAD" { "GET" } else { req.method.as_str() };
    match (method, path.as_str()) {
        ("GET", "/healthz") => return Response::json(200, &json!({"status": "ok"})),
        ("GET", "/readyz") => {
            let why = ctx.metrics.health.not_ready().or((!ctx.token_file_ok()).then_some("admin token file missing"));
            return match why {
                None => Response::json(200, &json!({"status": "ready"})),
                Some(w) => error_response(503, &format!("not ready: {w}")),
            };
        }
        ("GET", "/metrics") => {
            if ctx.cfg.admin.metrics_token && !authorized(ctx, req) {
                return error_response(401, "missing or wrong bearer token");
            }
            let om = req.header_str("accept").is_some_and(|a| a.contains("application/openmetrics-text"));
            let ct = if om {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            return Response::new(200, ct, ctx.metrics.render(om).into_bytes());
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v1/") else { return error_response(404, "no such endpoint") };
    if !authorized(ctx, req) {
        return error_response(401, "missing or wrong bearer token");
    }
    let segs: Vec<String> = match rest.split('/').map(percent_decode).collect::<Option<Vec<_>>>() {
        Some(s) => s,
        None => return error_response(400, "path is not valid percent-encoded UTF-8"),
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let r = match (method, segs.as_slice()) {
        ("POST", ["messages"]) => publish(ctx, req),
        ("GET", ["messages", id]) => ledger(ctx, id),
        ("GET", ["users", user]) => presence(ctx, user),
        ("DELETE", ["users", user, "connections"]) => kick(ctx, user),
        ("PUT", ["users", user, "mute"]) => mute(ctx, user, req),
        ("PUT", ["groups", g]) => put_group(ctx, g, req),
        ("GET", ["groups", g]) => get_group(ctx, g),
        ("DELETE", ["groups", g]) => delete_group(ctx, g),
        ("POST", ["groups", g, "members"]) => group_members(ctx, g, req),
        (_, ["messages"] | ["messages", _] | ["users", _] | ["users", _, "connections" | "mute"] | ["groups", _])
        | (_, ["groups", _, "members"]) => fail(405, format!("{} is not allowed on {path}", req.method)),
        _ => fail(404, "no such endpoint"),
    };
    match r {
        Ok(v) => Response::json(200, &v),
        Err((status, msg)) => error_response(status, &msg),
    }
}

fn authorized(ctx: &Ctx, req: &Request) -> bool {
    let Some(h) = req.header("authorization") else { return false };
    let h = h.trim_ascii();
    if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    ctx.token_ok(h[7..].trim_ascii())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn body_json(req: &Request) -> Result<serde_json::Map<String, Value>, (u16, String)> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => fail(400, "the body must be a JSON object"),
        Err(e) => fail(400, format!("the body is not JSON: {e}")),
    }
}

fn check_id(what: &str, id: &str) -> Result<(), (u16, String)> {
    if id.is_empty() || id.len() > MAX_ID {
        return fail(400, format!("{what} must be 1..=255 bytes"));
    }
    Ok(())
}

/// A JSON array of ids, duplicates removed (first occurrence kept).
fn id_list(v: Option<&Value>, what: &str, max: usize) -> Result<Vec<String>, (u16, String)> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Some(arr) = v.as_array() else { return fail(400, format!("{what} must be an array of strings")) };
    if arr.len() > max {
        return fail(413, format!("{what} has more than {max} entries"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for x in arr {
        let Some(s) = x.as_str() else { return fail(400, format!("{what} must be an array of strings")) };
        check_id(what, s)?;
        if seen.insert(s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// Posts `cmd` (built around a fresh reply channel) to `core` and waits.
fn ask<T>(ctx: &Ctx, core: usize, make: impl FnOnce(mpsc::Sender<T>) -> AdminCmd) -> Result<T, (u16, String)> {
    let Some(mesh) = ctx.mesh() else { return fail(503, "starting: the worker cores are not running yet") };
    let (tx, rx) = mpsc::channel();
    mesh[core].post(CoreMsg::Admin(Box::new(make(tx))));
    rx.recv_timeout(CORE_WAIT).or_else(|_| fail(503, "the worker core did not answer in time"))
}

/// Posts one command per core and waits for every answer.
fn ask_all<T>(ctx: &Ctx, make: impl Fn(mpsc::Sender<T>) -> AdminCmd) -> Result<Vec<T>, (u16, String)> {
    let Some(mesh) = ctx.mesh() else { return fail(503, "starting: the worker cores are not running yet") };
    let (tx, rx) = mpsc::channel();
    for m in mesh.iter() {
        m.post(CoreMsg::Admin(Box::new(make(tx.clone()))));
    }
    drop(tx);
    let mut out = Vec::with_capacity(mesh.len());
    for _ in 0..mesh.len() {
        out.push(rx.recv_timeout(CORE_WAIT).or_else(|_| fail(503, "a worker core did not answer in time"))?);
    }
    Ok(out)
}

fn cores(ctx: &Ctx) -> Result<usize, (u16, String)> {
    match ctx.mesh() {
        Some(m) => Ok(m.len()),
        None => fail(503, "starting: the worker cores are not running yet"),
    }
}

fn count_publish(ctx: &Ctx, status: usize) {
    ctx.metrics.publishes[status].fetch_add(1, Relaxed);
}

fn publish(ctx: &Ctx, req: &Request) -> Answer {
    let body = body_json(req)?;
    let canon = Value::Object(body.clone()).to_string();
    let from = match body.get("from") {
        None | Some(Value::Null) => "system".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return fail(400, "from must be a string"),
    };
    check_id("from", &from)?;
    let payload = match (body.get("payload"), body.get("payload_b64")) {
        (Some(Value::String(p)), None) => p.clone().into_bytes(),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .or_else(|e| fail(400, format!("payload_b64 is not base64: {e}")))?,
        (Some(_), Some(_)) => return fail(400, "give exactly one of payload and payload_b64"),
        (None, None) => return fail(400, "give payload or payload_b64"),
        _ => return fail(400, "payload and payload_b64 must be strings"),
    };
    let key = match body.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => {
            check_id("idempotency_key", k)?;
            Some(k.clone())
        }
        Some(_) => return fail(400, "idempotency_key must be a string"),
    };
    // The same limit a SEND meets: the PUSH carrying it must fit max_frame
    // (type byte, seq, msg_id, timestamp, from, flags, payload).
    let push_len = 1 + 8 + 8 + 8 + 2 + from.len() + 1 + payload.len();
    let max_frame = ctx.cfg.session.max_frame as usize;
    if push_len > max_frame {
        count_publish(ctx, 4);
        ctx.metrics.admin_rejections[metrics::REJ_TOO_LARGE].fetch_add(1, Relaxed);
        return fail(413, format!("the PUSH would be {push_len} bytes, over session.max_frame = {max_frame}"));
    }
    let (targets, group) = match (body.get("to_users"), body.get("to_group")) {
        (Some(u), None) => {
            let users = id_list(Some(u), "to_users", MAX_RECIPIENTS)?;
            if users.is_empty() {
                return fail(400, "to_users is empty");
            }
            (users, None)
        }
        (None, Some(Value::String(g))) if ctx.fleet().is_some() => {
            let f = ctx.fleet().map(Arc::clone).ok_or((503, String::new()))?;
            match super::fleet::group(&f, g)? {
                None => {
                    count_publish(ctx, 1);
                    return fail(404, format!("no group {g:?}"));
                }
                Some(m) => (m.into_iter().filter(|x| *x != from).collect(), Some(g.clone())),
            }
        }
        (None, Some(Value::String(g))) => {
            let st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
            match st.groups.get(g) {
                None => {
                    drop(st);
                    count_publish(ctx, 1);
                    return fail(404, format!("no group {g:?}"));
                }
                // The sender's own inbox is not written (a SEND's rule).
                Some(m) => (m.iter().filter(|x| **x != from).cloned().collect(), Some(g.clone())),
            }
        }
        (None, Some(_)) => return fail(400, "to_group must be a string"),
        _ => return fail(400, "give exactly one of to_users and to_group"),
    };
    let hash = hex::encode(sha2::Sha256::digest(canon.as_bytes()));
    if let Some(f) = ctx.fleet().cloned() {
        return fleet_publish(ctx, &f, key, &hash, from, targets, group, payload);
    }
    // An idempotent retry of a stored publish is answered even when over the
    // rate: it costs nothing downstream.
    let replay = key.as_ref().and_then(|k| {
        let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        st.idem_get(k, now_ms()).map(|r| (r.hash == hash, r.response.clone()))
    });
    match replay {
        Some((true, response)) => return Ok(response),
        Some((false, _)) => {
            return fail(409, format!("idempotency_key {:?} was used with a different body", key.unwrap_or_default()))
        }
        None => {}
    }
    if !ctx.publish_allowed() {
        count_publish(ctx, 3);
        ctx.metrics.admin_rejections[metrics::REJ_RATE_LIMITED].fetch_add(1, Relaxed);
        return fail(429, format!("over admin.publishes_per_s = {}", ctx.cfg.admin.publishes_per_s));
    }
    if let Some(k) = &key {
        let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = st.idem_get(k, now_ms()) {
            return if r.hash == hash {
                Ok(r.response.clone())
            } else {
                fail(409, format!("idempotency_key {k:?} was used with a different body"))
            };
        }
        if !st.idem_inflight.insert(k.clone()) {
            return fail(409, format!("a publish with idempotency_key {k:?} is in progress"));
        }
    }
    let result = publish_to_cores(ctx, from, targets, group, payload);
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = &key {
        st.idem_inflight.remove(k);
    }
    let answer = result?;
    if let Some(k) = key {
        let r = IdemRecord { key: k, hash, at_ms: now_ms(), response: answer.clone() };
        if let Err(e) = st.idem_put(r) {
            // Stored and delivered; only the retry protection is missing.
            tracing::error!(error = %e, "cannot record an idempotency key");
        }
    }
    Ok(answer)
}

/// Fleet mode: the idempotency key is claimed in the engine (any node's
/// retry finds the claim or the first answer), then the publish runs.
#[allow(clippy::too_many_arguments)]
fn fleet_publish(
    ctx: &Ctx,
    f: &crate::fleet::Fleet,
    key: Option<String>,
    hash: &str,
    from: String,
    targets: Vec<String>,
    group: Option<String>,
    payload: Vec<u8>,
) -> Answer {
    use super::fleet::{idem_claim, idem_finish, Idem};
    let pending = match &key {
        Some(k) => match idem_claim(f, k, hash)? {
            Idem::Answer(a) => return a,
            Idem::Claimed(p) => Some((k.as_str(), p)),
        },
        None => None,
    };
    let result = if ctx.publish_allowed() {
        publish_to_cores(ctx, from, targets, group, payload)
    } else {
        count_publish(ctx, 3);
        ctx.metrics.admin_rejections[metrics::REJ_RATE_LIMITED].fetch_add(1, Relaxed);
        fail(429, format!("over admin.publishes_per_s = {}", ctx.cfg.admin.publishes_per_s))
    };
    if let Some((k, p)) = pending {
        idem_finish(ctx, f, k, p, hash, result.as_ref().ok());
    }
    result
}

fn publish_to_cores(
    ctx: &Ctx,
    from: String,
    targets: Vec<String>,
    group: Option<String>,
    payload: Vec<u8>,
) -> Answer {
    let n = cores(ctx)?;
    let from: Arc<str> = Arc::from(from.as_str());
    // Any core can pick the msg_id and fan out; spread publishes over them.
    let core = ctx.pick_core(n);
    let targets: Vec<Arc<str>> = targets.iter().map(|t| Arc::from(t.as_str())).collect();
    let r = ask(ctx, core, |reply| {
        AdminCmd::Publish(PublishCmd {
            from,
            targets,
            group: group.map(|g| Arc::from(g.as_str())),
            payload: bytes::Bytes::from(payload),
            reply,
        })
    });
    match r {
        Ok(Ok(p)) => {
            count_publish(ctx, 0);
            let seqs: BTreeMap<String, u64> = p.seqs.iter().map(|(u, s)| (u.to_string(), *s)).collect();
            Ok(json!({
                "msg_id": p.msg_id,
                "msg_id_str": p.msg_id.to_string(),
                "timestamp_ms": p.timestamp_ms,
                "seqs": seqs,
            }))
        }
        Ok(Err(e)) => {
            count_publish(ctx, 5);
            ctx.metrics.admin_rejections[metrics::REJ_BUSY].fetch_add(1, Relaxed);
            fail(503, format!("not stored: {e}"))
        }
        Err(e) => {
            count_publish(ctx, 5);
            Err(e)
        }
    }
}

fn ledger(ctx: &Ctx, id: &str) -> Answer {
    let Ok(msg_id) = id.parse::<u64>() else { return fail(400, "msg_id must be a decimal integer") };
    let parts = ask_all(ctx, |reply| AdminCmd::Ledger { msg_id, reply })?;
    let mut recipients: Vec<_> = parts.into_iter().flatten().collect();
    let Some(first) = recipients.first().cloned() else {
        return fail(404, format!("message {msg_id} is not in the delivery ledger (unknown, or past admin.ledger_retention_s)"));
    };
    recipients.sort_by(|a, b| a.user.cmp(&b.user));
    let rs: Vec<Value> = recipients
        .iter()
        .map(|r| {
            let devices: Vec<Value> = r
                .devices
                .iter()
                .map(|d| {
                    json!({
                        "device_id": &*d.device_id,
                        "pushed_at_ms": d.pushed_at_ms,
                        "attempts": d.attempts,
                        "acked_at_ms": d.acked_at_ms,
                    })
                })
                .collect();
            json!({"user": &*r.user, "seq": r.seq, "devices": devices})
        })
        .collect();
    Ok(json!({
        "msg_id": msg_id,
        "msg_id_str": msg_id.to_string(),
        "from": &*first.from,
        "timestamp_ms": first.timestamp_ms,
        "recipients": rs,
    }))
}

fn presence(ctx: &Ctx, user: &str) -> Answer {
    check_id("user", user)?;
    if let Some(f) = ctx.fleet() {
        return super::fleet::presence(ctx, f, user);
    }
    let n = cores(ctx)?;
    let u: Arc<str> = Arc::from(user);
    let p = ask(ctx, home_core(user, n), |reply| AdminCmd::Presence { user: u, reply })?;
    let muted = {
        let st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        st.mutes.get(user).copied().filter(|t| *t > now_ms()).unwrap_or(0)
    };
    let devices: Vec<Value> = p
        .devices
        .iter()
        .map(|d| {
            json!({
                "device_id": &*d.device_id,
                "online": d.online,
                "transport": ctx.metrics.transport,
                "remote": d.remote.map(|a| a.to_string()),
                "connected_at_ms": d.connected_at_ms,
                "acked_seq": d.acked_seq,
            })
        })
        .collect();
    Ok(json!({
        "user": user,
        "head_seq": p.head_seq,
        "oldest_seq": p.oldest_seq,
        "muted_until_ms": muted,
        "devices": devices,
    }))
}

fn kick(ctx: &Ctx, user: &str) -> Answer {
    check_id("user", user)?;
    let n = cores(ctx)?;
    let u: Arc<str> = Arc::from(user);
    let closed = ask(ctx, home_core(user, n), |reply| AdminCmd::Kick { user: u, reply })?;
    // Fleet mode: every other live node closes its own and says how many
    // (503 when one does not confirm: a retry closes what is left).
    let elsewhere = match ctx.fleet() {
        Some(f) => super::fleet::kick(f, user)?,
        None => 0,
    };
    Ok(json!({"user": user, "closed": closed as u64 + elsewhere}))
}

fn mute(ctx: &Ctx, user: &str, req: &Request) -> Answer {
    check_id("user", user)?;
    let body = body_json(req)?;
    let Some(until_ms) = body.get("until_ms").and_then(Value::as_u64) else {
        return fail(400, "until_ms must be a non-negative integer (epoch ms; 0 lifts the mute)");
    };
    if let Some(f) = ctx.fleet() {
        return super::fleet::mute(f, user, until_ms);
    }
    let n = cores(ctx)?;
    let active = until_ms > now_ms();
    // Under the state lock from file to cores, so two changes reach both in the same order.
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    if active {
        st.mutes.insert(user.to_string(), until_ms);
    } else {
        st.mutes.remove(user);
    }
    st.save_mutes().or_else(|e| fail(503, format!("cannot save the mute: {e}")))?;
    let u: Arc<str> = Arc::from(user);
    ask(ctx, home_core(user, n), |reply| AdminCmd::Mute { user: u, until_ms, reply })?;
    Ok(json!({"user": user, "until_ms": if active { until_ms } else { 0 }}))
}

/// Saves `name`'s new member list (or its deletion) and waits until every
/// core applies it: a SEND handled after the answer sees the change.
fn apply_group(ctx: &Ctx, st: &mut super::state::State, name: &str, members: Option<Vec<String>>) -> Result<(), (u16, String)> {
    cores(ctx)?;
    match &members {
        Some(m) => {
            if !st.groups.contains_key(name) && st.groups.len() >= MAX_GROUPS {
                return fail(413, format!("already {MAX_GROUPS} groups"));
            }
            st.groups.insert(name.to_string(), m.clone());
        }
        None => {
            st.groups.remove(name);
        }
    }
    st.save_groups().or_else(|e| fail(503, format!("cannot save the group: {e}")))?;
    let shared: Option<Arc<[Arc<str>]>> = members.map(|m| m.iter().map(|x| Arc::from(x.as_str())).collect());
    let n: Arc<str> = Arc::from(name);
    ask_all(ctx, |reply| AdminCmd::Group { name: n.clone(), members: shared.clone(), reply })?;
    Ok(())
}

fn put_group(ctx: &Ctx, g: &str, req: &Request) -> Answer {
    check_id("group", g)?;
    let body = body_json(req)?;
    if !body.get("members").is_some_and(Value::is_array) {
        return fail(400, "members must be an array of strings");
    }
    let members = id_list(body.get("members"), "members", MAX_GROUP_MEMBERS)?;
    if let Some(f) = ctx.fleet() {
        return super::fleet::put_group(f, g, members);
    }
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    apply_group(ctx, &mut st, g, Some(members.clone()))?;
    Ok(json!({"group": g, "members": members}))
}

fn get_group(ctx: &Ctx, g: &str) -> Answer {
    if let Some(f) = ctx.fleet() {
        return super::fleet::get_group(f, g);
    }
    let st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    match st.groups.get(g) {
        Some(m) => Ok(json!({"group": g, "members": m})),
        None => fail(404, format!("no group {g:?}")),
    }
}

fn delete_group(ctx: &Ctx, g: &str) -> Answer {
    if let Some(f) = ctx.fleet() {
        return super::fleet::delete_group(f, g);
    }
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    if !st.groups.contains_key(g) {
        return fail(404, format!("no group {g:?}"));
    }
    apply_group(ctx, &mut st, g, None)?;
    Ok(json!({"group": g, "deleted": true}))
}

fn group_members(ctx: &Ctx, g: &str, req: &Request) -> Answer {
    let body = body_json(req)?;
    let add = id_list(body.get("add"), "add", MAX_GROUP_MEMBERS)?;
    let remove = id_list(body.get("remove"), "remove", MAX_GROUP_MEMBERS)?;
    if let Some(f) = ctx.fleet() {
        return super::fleet::edit_group(f, g, add, remove);
    }
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cur) = st.groups.get(g) else { return fail(404, format!("no group {g:?}")) };
    let removed: std::collections::HashSet<&String> = remove.iter().collect();
    let mut members: Vec<String> = cur.iter().filter(|m| !removed.contains(m)).cloned().collect();
    let mut present: std::collections::HashSet<String> = members.iter().cloned().collect();
    for a in add {
        if !removed.contains(&a) && present.insert(a.clone()) {
            members.push(a);
        }
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return fail(413, format!("a group has at most {MAX_GROUP_MEMBERS} members"));
    }
    apply_group(ctx, &mut st, g, Some(members.clone()))?;
    Ok(json!({"group": g, "members": members}))
}
