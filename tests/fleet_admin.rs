//! Fleet mode's admin state (FLEET.md point 7, ADMIN.md) across real nodes on
//! real `redis-server`s: groups, mutes, idempotency keys and presence set
//! through one node's admin API are in effect on every other node; engine
//! trouble is a 503 within `engine_timeout_ms`.
//!
//! Needs `redis-server` on PATH (see tests/fleet.rs).

mod common;
#[path = "common/fleet.rs"]
mod fleet_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fleet_common::*;
use serde_json::Value;

/// One admin call on `s`: (status, JSON body).
fn call(s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (a, t): (SocketAddr, String) = admin(s);
    let (st, b) = http(a, method, path, Some(&t), body);
    (st, serde_json::from_str(&b).unwrap_or(Value::Null))
}

fn ok(s: &Server, method: &str, path: &str, body: Option<&str>) -> Value {
    let (st, v) = call(s, method, path, body);
    assert_eq!(st, 200, "{method} {path}: {v}");
    v
}

fn members(v: &Value) -> Vec<String> {
    v["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect()
}

/// The device's entry in `GET /v1/users/{user}` on `s`.
fn device(s: &Server, user: &str, dev: &str) -> Option<Value> {
    let v = ok(s, "GET", &format!("/v1/users/{user}"), None);
    v["devices"].as_array().unwrap().iter().find(|d| d["device_id"] == dev).cloned()
}

/// Waits until `f` holds for the device's entry; returns how long it took.
fn wait_device(s: &Server, user: &str, dev: &str, what: &str, f: impl Fn(&Value) -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        let d = device(s, user, dev);
        if d.as_ref().is_some_and(&f) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < WAIT, "{user}/{dev} never {what}: {d:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn group_send(c: &mut Client, id: u64, group: &str, payload: &[u8]) -> SendAck {
    c.send_frame(&send_to_group(id, group, payload));
    c.expect_sendack(id)
}

/// Groups, mutes and idempotency keys changed on one node, in effect on
/// the others (`nodes` on one engine, or on a cluster).
fn check_admin_state(nodes: &[&Server]) {
    let (n1, n2, n3) = (nodes[0], nodes[1], nodes[nodes.len() - 1]);
    // Groups: created on n1, changed on n2, read on n3.
    let v = ok(n1, "PUT", "/v1/groups/crew", Some(r#"{"members":["alice","bob"]}"#));
    assert_eq!(members(&v), ["alice", "bob"]);
    let v = ok(n2, "POST", "/v1/groups/crew/members", Some(r#"{"add":["carol","dave"],"remove":["bob"]}"#));
    assert_eq!(members(&v), ["alice", "carol", "dave"]);
    assert_eq!(members(&ok(n3, "GET", "/v1/groups/crew", None)), ["alice", "carol", "dave"]);
    assert_eq!(call(n3, "POST", "/v1/groups/nope/members", Some(r#"{"add":["x"]}"#)).0, 404);

    // A SEND from n3 reaches exactly the members as of n2's change, once.
    let (mut bob, _) = n1.login("bob", "b1", 0);
    let (mut carol, _) = n2.login("carol", "c1", 0);
    let (mut dave, _) = n1.login("dave", "d1", 0);
    let (mut alice, _) = n3.login("alice", "a1", 0);
    let a = group_send(&mut alice, 1, "crew", b"to the crew");
    assert_eq!(a.status, 0, "{a:?}");
    for (c, who) in [(&mut carol, "carol"), (&mut dave, "dave")] {
        let got = collect(c, 2, Duration::from_secs(3));
        assert_eq!(got.len(), 1, "{who} gets it once: {got:?}");
        assert_eq!(got.values().next().map(|p| p.0), Some(a.msg_id));
    }
    assert!(collect(&mut bob, 1, QUIET).is_empty(), "bob was removed on n2 before the SEND");
    // Not a member (bob), no such group: refused by the engine like on one node.
    assert_eq!(group_send(&mut bob, 1, "crew", b"x").status, 2);
    assert_eq!(group_send(&mut alice, 2, "nope", b"x").status, 1);
    // An admin publish on n2 to the group: every member but `from`.
    let v = ok(n2, "POST", "/v1/messages", Some(r#"{"to_group":"crew","from":"carol","payload":"p"}"#));
    assert_eq!(v["seqs"].as_object().unwrap().keys().collect::<Vec<_>>(), ["alice", "dave"], "{v}");
    assert_eq!(collect(&mut dave, 1, WAIT).len(), 1);
    // Deleted on n3: gone on n1 at once.
    ok(n3, "DELETE", "/v1/groups/crew", None);
    assert_eq!(call(n1, "GET", "/v1/groups/crew", None).0, 404);
    assert_eq!(call(n2, "DELETE", "/v1/groups/crew", None).0, 404);
    assert_eq!(group_send(&mut alice, 3, "crew", b"x").status, 1, "deleted on n3, refused on n3's peer too");
    assert_eq!(call(n1, "POST", "/v1/messages", Some(r#"{"to_group":"crew","payload":"p"}"#)).0, 404);

    // Mutes: set on n2, enforced on alice's n3; read on n1; lifted on n1.
    let until = unix_now_ms() + 60_000;
    let v = ok(n2, "PUT", "/v1/users/alice/mute", Some(&format!(r#"{{"until_ms":{until}}}"#)));
    assert_eq!(v["until_ms"], until);
    assert_eq!(alice.send_and_ack(10, "bob", b"muted").status, 2, "muted on n2, forbidden on n3");
    assert_eq!(ok(n1, "GET", "/v1/users/alice", None)["muted_until_ms"], until);
    // A SEND stored before the mute and retried keeps its answer (ADMIN.md).
    ok(n1, "PUT", "/v1/users/alice/mute", Some(r#"{"until_ms":0}"#));
    let first = alice.send_ok(11, "bob", b"before");
    ok(n2, "PUT", "/v1/users/alice/mute", Some(&format!(r#"{{"until_ms":{until}}}"#)));
    let (mut alice2, _) = n2.login("alice", "a1", 0);
    let again = alice2.send_and_ack(11, "bob", b"before");
    assert_eq!((again.status, again.msg_id), (0, first.msg_id), "the retry on another node gets the original");
    ok(n3, "PUT", "/v1/users/alice/mute", Some(r#"{"until_ms":0}"#));
    assert_eq!(ok(n1, "GET", "/v1/users/alice", None)["muted_until_ms"], 0);
    alice2.send_ok(12, "bob", b"unmuted");
    assert_eq!(collect(&mut bob, 2, WAIT).len(), 2, "before + unmuted");

    // Idempotency keys: the retry on another node returns the first answer
    // and stores nothing; another body is a conflict on any node.
    let head = |s: &Server| ok(s, "GET", "/v1/users/erin", None)["head_seq"].as_u64().unwrap();
    let body = r#"{"to_users":["erin"],"payload":"once","idempotency_key":"k-fleet"}"#;
    let v1 = ok(n1, "POST", "/v1/messages", Some(body));
    let v2 = ok(n2, "POST", "/v1/messages", Some(body));
    assert_eq!(v1, v2, "the first answer, from another node");
    assert_eq!(head(n3), 1, "one inbox entry");
    let (st, v) = call(n3, "POST", "/v1/messages", Some(r#"{"to_users":["erin"],"payload":"other","idempotency_key":"k-fleet"}"#));
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("conflict")), "{v}");
    assert_eq!(head(n3), 1);
}

#[test]
fn groups_mutes_and_idempotency_keys_are_fleet_wide() {
    let Some(bin) = redis_or_skip("groups_mutes_and_idempotency_keys_are_fleet_wide") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 3);
    check_admin_state(&[&f.nodes[0], &f.nodes[1], &f.nodes[2]]);
    // The config's [groups] seeded the engine once (the default config has "team").
    assert_eq!(members(&ok(&f.nodes[2], "GET", "/v1/groups/team", None)), ["alice", "bob", "carol"]);
    for s in &f.nodes {
        s.assert_no_panic();
    }
}

#[test]
fn presence_lists_every_nodes_devices_and_their_liveness() {
    let Some(bin) = redis_or_skip("presence_lists_every_nodes_devices_and_their_liveness") else { return };
    let mut redis = Redis::start(bin);
    let mut f = Fleet::start(&redis, 3);
    let hb = Duration::from_millis(200); // node_config's heartbeat_ms
    let (mut bob, _) = f.nodes[1].login("bob", "b1", 0);
    let (mut alice, _) = f.nodes[0].login("alice", "a1", 0);
    alice.send_ok(1, "bob", b"x");
    assert_eq!(collect(&mut bob, 1, WAIT).len(), 1);
    // Seen from n1 and n3: on n2, online.
    for s in [&f.nodes[0], &f.nodes[2]] {
        wait_device(s, "bob", "b1", "online on n2", |d| d["node"] == "n2" && d["online"] == true);
    }
    let v = ok(&f.nodes[2], "GET", "/v1/users/bob", None);
    assert_eq!((v["head_seq"].as_u64(), v["oldest_seq"].as_u64()), (Some(1), Some(1)), "{v}");
    let here = device(&f.nodes[1], "bob", "b1").unwrap();
    assert_eq!(here["acked_seq"], 1, "n2 knows bob's live cursor: {here}");
    assert!(here["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{here}");

    // Disconnects: offline, still listed, still n2.
    bob.shutdown();
    drop(bob);
    wait_device(&f.nodes[0], "bob", "b1", "offline", |d| d["online"] == false && d["node"] == "n2");

    // Moves to n3, whose node then dies (kill -9): offline within 3 x heartbeat_ms.
    let (_bob3, _) = f.nodes[2].login("bob", "b1", 1);
    wait_device(&f.nodes[0], "bob", "b1", "online on n3", |d| d["node"] == "n3" && d["online"] == true);
    f.nodes[2].kill9();
    let took = wait_device(&f.nodes[0], "bob", "b1", "offline after n3's kill -9", |d| d["online"] == false);
    eprintln!("presence: online false {took:?} after the node's kill -9 (heartbeat_ms {hb:?})");
    // The polling itself and a loaded machine: a wide margin over 3 x heartbeat_ms.
    assert!(took < 3 * hb + Duration::from_millis(1500), "online stayed true for {took:?}");
    assert_eq!(device(&f.nodes[1], "bob", "b1").unwrap()["node"], "n3", "last connected to n3");

    // Engine trouble: 503 unavailable within engine_timeout_ms (700), no hang.
    redis.kill9();
    for (m, p, b) in [
        ("GET", "/v1/users/bob", None),
        ("PUT", "/v1/groups/g", Some(r#"{"members":["a"]}"#)),
        ("GET", "/v1/groups/team", None),
        ("PUT", "/v1/users/bob/mute", Some(r#"{"until_ms":0}"#)),
        ("POST", "/v1/messages", Some(r#"{"to_users":["bob"],"payload":"x","idempotency_key":"k"}"#)),
    ] {
        let t0 = Instant::now();
        let (st, v) = call(&f.nodes[0], m, p, b);
        assert_eq!((st, v["error"]["code"].as_str()), (503, Some("unavailable")), "{m} {p}: {v}");
        assert!(t0.elapsed() < Duration::from_millis(700 + 2000), "{m} {p} took {:?}", t0.elapsed());
    }
    redis.restart();
    wait_ready(&f.nodes[0], true);
    assert_eq!(device(&f.nodes[0], "bob", "b1").unwrap()["node"], "n3", "the engine's AOF kept presence");
    f.nodes[0].assert_no_panic();
    f.nodes[1].assert_no_panic();
}

#[test]
fn admin_state_on_a_redis_cluster() {
    let Some(bin) = redis_or_skip("admin_state_on_a_redis_cluster") else { return };
    let shards = start_cluster(&bin);
    let urls: Vec<String> = shards.iter().map(|r| r.url()).collect();
    let key_dir = tempfile::tempdir().unwrap();
    let key = shared_key(key_dir.path());
    let nodes: Vec<Server> = (1..=3).map(|i| node_config(&urls, &format!("n{i}"), &key, "").start()).collect();
    for s in &nodes {
        wait_ready(s, true);
    }
    check_admin_state(&[&nodes[0], &nodes[1], &nodes[2]]);
    let (_c, _) = nodes[1].login("carol", "c9", 0);
    wait_device(&nodes[0], "carol", "c9", "online on n2", |d| d["node"] == "n2" && d["online"] == true);
    for s in &nodes {
        s.assert_no_panic();
    }
}
