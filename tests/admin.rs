//! The admin API (ADMIN.md) against the real binary: auth, health, publish
//! and idempotency, the delivery ledger, presence, kick, mute, durable
//! groups and mutes across kill -9, Prometheus metrics moving with traffic,
//! `/readyz` during recovery, and the Grafana dashboard's queries.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ---- a small HTTP/1.1 client ----------------------------------------------

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `s` (Content-Length framed, as the server always answers).
fn read_resp(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = r.parse(&buf).expect("valid response head") {
            let status = r.code.unwrap();
            let headers: Vec<(String, String)> =
                r.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("every response has a Content-Length");
            while buf.len() < n + len {
                let k = s.read(&mut chunk).expect("read body");
                assert!(k > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..k]);
            }
            return Resp { status, headers, body: buf[n..n + len].to_vec() };
        }
        let k = s.read(&mut chunk).expect("read head");
        assert!(k > 0, "closed before a response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..k]);
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    req += &body;
    s.write_all(req.as_bytes()).unwrap();
    read_resp(&mut s)
}

/// Finds `admin_addr=IP:PORT` in the server's log.
fn parse_admin_addr(log: &str) -> Option<SocketAddr> {
    let at = log.rfind("admin_addr=")? + "admin_addr=".len();
    let rest = &log[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct Admin {
    addr: SocketAddr,
    token: String,
}

impl Admin {
    fn of(s: &Server) -> Admin {
        let addr = parse_admin_addr(&s.stderr_tail()).unwrap_or_else(|| panic!("no admin_addr in the log:\n{}", s.stderr_tail()));
        let token = std::fs::read_to_string(s.data_dir().join("admin-token")).expect("admin-token").trim().to_string();
        Admin { addr, token }
    }
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        request(self.addr, method, path, Some(&self.token), body.as_ref())
    }
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()
    }
    fn publish(&self, body: Value) -> Resp {
        self.call("POST", "/v1/messages", Some(body))
    }
    fn metrics(&self) -> BTreeMap<String, f64> {
        let r = request(self.addr, "GET", "/metrics", None, None);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
        parse_prometheus(&r.text())
    }
}

/// Parses Prometheus text: `name{labels} value` per sample line; panics on
/// anything that is not a comment or a well-formed sample.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            typed.insert(it.next().unwrap().to_string());
            assert!(matches!(it.next(), Some("counter" | "gauge" | "histogram")), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample {line}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad name {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels {line}");
            }
        }
        let fam = ["_bucket", "_sum", "_count"].iter().fold(name, |n, suf| n.strip_suffix(suf).unwrap_or(n));
        assert!(typed.contains(name) || typed.contains(fam), "sample before its # TYPE: {line}");
        out.insert(series.to_string(), v);
    }
    out
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- auth and health -------------------------------------------------------

#[test]
fn auth_is_refused_without_the_token_and_health_needs_none() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let tok_path = s.data_dir().join("admin-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&tok_path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(s.stderr_tail().contains(&tok_path.display().to_string()), "token path printed");

    for (tok, what) in [(None, "no token"), (Some("wrong-token-wrong-token"), "wrong token")] {
        let r = request(a.addr, "GET", "/v1/users/bob", tok, None);
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.json()["error"]["code"], "unauthorized");
    }
    let r = request(a.addr, "GET", "/v1/users/bob", Some(&format!("{}x", a.token)), None);
    assert_eq!(r.status, 401);
    assert_eq!(request(a.addr, "GET", "/healthz", None, None).status, 200);
    let r = request(a.addr, "GET", "/readyz", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(request(a.addr, "GET", "/metrics", None, None).status, 200);
    let r = a.call("GET", "/v1/nothing", None);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
    let r = a.call("PATCH", "/v1/users/bob", None);
    assert_eq!(r.status, 405);
    let u = a.ok("GET", "/v1/users/nobody%20here", None);
    assert_eq!(u["user"], "nobody here");
    assert_eq!((u["head_seq"].as_u64(), u["oldest_seq"].as_u64()), (Some(0), Some(1)));
    assert_eq!(u["devices"], json!([]));
}

#[test]
fn token_is_reused_and_http_edges_answer_cleanly() {
    let mut s = Server::default_start();
    let first = Admin::of(&s).token;
    s.restart();
    let a = Admin::of(&s);
    assert_eq!(a.token, first, "the generated token is reused on restart");

    // Keep-alive: two requests on one connection; then a chunked body with
    // Expect: 100-continue, as curl sends large bodies.
    let mut c = TcpStream::connect(a.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    for _ in 0..2 {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_resp(&mut c).status, 200);
    }
    let body = json!({"members": ["a", "b"]}).to_string();
    let head = format!(
        "PUT /v1/groups/chunky HTTP/1.1\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        a.token
    );
    c.write_all(head.as_bytes()).unwrap();
    let mut cont = [0u8; 25];
    c.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    let (x, y) = body.split_at(5);
    c.write_all(format!("{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n", x.len(), y.len()).as_bytes()).unwrap();
    let r = read_resp(&mut c);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["members"], json!(["a", "b"]));

    // Garbage, an oversized body, bad JSON: JSON errors, never a hang.
    let mut g = TcpStream::connect(a.addr).unwrap();
    g.set_read_timeout(Some(WAIT)).unwrap();
    g.write_all(b"\x16\x03\x01 nonsense\r\n\r\n").unwrap();
    let r = read_resp(&mut g);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("bad_request")));
    let mut big = TcpStream::connect(a.addr).unwrap();
    big.set_read_timeout(Some(WAIT)).unwrap();
    big.write_all(b"POST /v1/messages HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n").unwrap();
    let r = read_resp(&mut big);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (413, Some("too_large")));
    let r = request(a.addr, "POST", "/v1/messages", Some(&a.token), Some(&json!("a string")));
    assert_eq!(r.status, 400);
    s.assert_no_panic();
}

// ---- publish ---------------------------------------------------------------

#[test]
fn publish_reaches_a_device_and_an_idempotent_retry_delivers_nothing() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let (mut bob, _) = s.login("bob", "b1", 0);
    let body = json!({"to_users": ["bob", "bob"], "payload": "hello from the backend", "idempotency_key": "k1"});
    let r = a.publish(body.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let msg_id = v["msg_id"].as_u64().expect("msg_id is a JSON integer");
    assert!(msg_id >= 1);
    assert_eq!(v["msg_id_str"], msg_id.to_string());
    assert_eq!(v["seqs"], json!({"bob": 1}), "duplicate user ids are delivered once");
    let p = bob.expect_push_seq(1, b"hello from the backend");
    assert_eq!((p.msg_id, p.from.as_str()), (msg_id, "system"));
    bob.ack(1);

    let again = a.publish(body.clone());
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), v, "a retry returns the first answer");
    bob.expect_silence(QUIET);

    let mut changed = body.clone();
    changed["payload"] = json!("something else");
    let r = a.publish(changed);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (409, Some("conflict")));

    // payload_b64, a custom sender, a group (the sender's inbox is not written).
    let r = a.publish(json!({"to_group": "team", "payload_b64": "AAEC/w==", "from": "alice"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let seqs = r.json()["seqs"].clone();
    assert_eq!(seqs, json!({"bob": 2, "carol": 1}));
    let p = bob.expect_push_seq(2, &[0, 1, 2, 255]);
    assert_eq!(p.from, "alice");

    let r = a.publish(json!({"to_group": "nope", "payload": "x"}));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
    // Too large for a PUSH within max_frame (65536).
    let r = a.publish(json!({"to_users": ["bob"], "payload": "x".repeat(65_536)}));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (413, Some("too_large")));
    let r = a.publish(json!({"to_users": ["bob"], "payload": "x".repeat(65_536 - 28 - 6)}));
    assert_eq!(r.status, 200, "the largest payload that fits: {}", r.text());
    for bad in [
        json!({"payload": "x"}),
        json!({"to_users": ["bob"], "to_group": "team", "payload": "x"}),
        json!({"to_users": ["bob"]}),
        json!({"to_users": ["bob"], "payload": "x", "payload_b64": "eA=="}),
        json!({"to_users": [""], "payload": "x"}),
        json!({"to_users": ["bob"], "payload_b64": "!!"}),
    ] {
        let r = a.publish(bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}

// ---- delivery ledger -------------------------------------------------------

#[test]
fn ledger_shows_pushed_and_acked() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let (mut bob, _) = s.login("bob", "b1", 0);
    let before = unix_now_ms();
    let v = a.publish(json!({"to_users": ["bob", "dave"], "payload": "p"})).json();
    let id = v["msg_id"].as_u64().unwrap();
    bob.expect_push_seq(1, b"p");
    let l = a.ok("GET", &format!("/v1/messages/{id}"), None);
    assert_eq!((l["msg_id"].as_u64(), l["from"].as_str()), (Some(id), Some("system")));
    assert_eq!(l["msg_id_str"], id.to_string());
    let rs = l["recipients"].as_array().unwrap();
    assert_eq!(rs.len(), 2, "{l}");
    let bob_r = rs.iter().find(|r| r["user"] == "bob").unwrap();
    assert_eq!(bob_r["seq"], 1);
    let d = &bob_r["devices"][0];
    assert_eq!((d["device_id"].as_str(), d["attempts"].as_u64()), (Some("b1"), Some(1)));
    assert!(d["pushed_at_ms"].as_u64().unwrap() >= before);
    assert!(d["acked_at_ms"].is_null(), "not acked yet: {d}");
    let dave = rs.iter().find(|r| r["user"] == "dave").unwrap();
    assert_eq!(dave["devices"], json!([]), "offline: no device yet");

    bob.ack(1);
    wait_for("the ack in the ledger", || {
        let l = a.ok("GET", &format!("/v1/messages/{id}"), None);
        let r = l["recipients"].as_array().unwrap().iter().find(|r| r["user"] == "bob").unwrap().clone();
        r["devices"][0]["acked_at_ms"].as_u64().is_some_and(|t| t >= before)
    });

    // dave connects later: a replay counts as a push; his CONNECT last_seq
    // acknowledges nothing he has not had; his PUSHACK does.
    let (mut dave_c, _) = s.login("dave", "d1", 0);
    dave_c.expect_push_seq(1, b"p");
    dave_c.ack(1);
    wait_for("dave's ack", || {
        let l = a.ok("GET", &format!("/v1/messages/{id}"), None);
        let r = l["recipients"].as_array().unwrap().iter().find(|r| r["user"] == "dave").unwrap().clone();
        r["devices"][0]["acked_at_ms"].as_u64().is_some()
    });

    // A client SEND is in the ledger too, with its sender.
    let (mut alice, _) = s.login("alice", "a1", 0);
    let ack = alice.send_ok(1, "bob", b"from alice");
    let l = a.ok("GET", &format!("/v1/messages/{}", ack.msg_id), None);
    assert_eq!(l["from"], "alice");
    assert_eq!(l["recipients"][0]["seq"], 2);

    let r = a.call("GET", "/v1/messages/12345", None);
    assert_eq!(r.status, 404);
    let r = a.call("GET", "/v1/messages/abc", None);
    assert_eq!(r.status, 400);
}

// ---- presence, kick, mute --------------------------------------------------

#[test]
fn presence_kick_and_mute() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let (mut bob, _) = s.login("bob", "b1", 0);
    let (mut alice, _) = s.login("alice", "a1", 0);
    alice.send_ok(1, "bob", b"one");
    bob.expect_push_seq(1, b"one");
    bob.ack(1);
    wait_for("bob's ack in presence", || {
        let u = a.ok("GET", "/v1/users/bob", None);
        u["devices"][0]["acked_seq"] == 1
    });
    let u = a.ok("GET", "/v1/users/bob", None);
    assert_eq!((u["head_seq"].as_u64(), u["oldest_seq"].as_u64(), u["muted_until_ms"].as_u64()), (Some(1), Some(1), Some(0)));
    let d = &u["devices"][0];
    assert_eq!((d["device_id"].as_str(), d["online"].as_bool(), d["transport"].as_str()), (Some("b1"), Some(true), Some("tls")));
    assert!(d["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{d}");
    assert!(d["connected_at_ms"].as_u64().unwrap() > 0);

    let k = a.ok("DELETE", "/v1/users/bob/connections", None);
    assert_eq!(k["closed"], 1);
    let msg = bob.expect_disconnect(reason::NORMAL);
    assert_eq!(msg, "closed by operator");
    wait_for("bob offline", || a.ok("GET", "/v1/users/bob", None)["devices"][0]["online"] == false);
    let u = a.ok("GET", "/v1/users/bob", None);
    assert_eq!(u["devices"][0]["acked_seq"], 1, "an offline device keeps its last cursor");
    assert_eq!(a.ok("DELETE", "/v1/users/bob/connections", None)["closed"], 0);

    let until = unix_now_ms() + 60_000;
    let m = a.ok("PUT", "/v1/users/alice/mute", Some(json!({"until_ms": until})));
    assert_eq!((m["user"].as_str(), m["until_ms"].as_u64()), (Some("alice"), Some(until)));
    assert_eq!(a.ok("GET", "/v1/users/alice", None)["muted_until_ms"], until);
    // The SEND accepted before the mute, retried, keeps its answer.
    let first = alice.send_and_ack(1, "bob", b"one");
    assert_eq!(first.status, sendack::STORED);
    assert_eq!(alice.send_and_ack(2, "bob", b"two").status, sendack::FORBIDDEN);
    alice.send_frame(&send_to_group(3, "team", b"x"));
    assert_eq!(alice.expect_sendack(3).status, sendack::FORBIDDEN);
    // Admin publishes in alice's name are not muted.
    assert_eq!(a.publish(json!({"to_users": ["bob"], "from": "alice", "payload": "ok"})).status, 200);
    let m = a.ok("PUT", "/v1/users/alice/mute", Some(json!({"until_ms": 0})));
    assert_eq!(m["until_ms"], 0);
    assert_eq!(alice.send_and_ack(4, "bob", b"four").status, sendack::STORED);
    assert_eq!(a.call("PUT", "/v1/users/alice/mute", Some(json!({"until_ms": "soon"}))).status, 400);
}

// ---- groups ----------------------------------------------------------------

#[test]
fn groups_are_managed_by_the_api() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let (mut alice, _) = s.login("alice", "a1", 0);
    let (mut bob, _) = s.login("bob", "b1", 0);
    let (mut carol, _) = s.login("carol", "c1", 0);
    // The config's [groups] seeded the data directory.
    assert_eq!(a.ok("GET", "/v1/groups/team", None)["members"], json!(["alice", "bob", "carol"]));
    alice.send_frame(&send_to_group(1, "g1", b"x"));
    assert_eq!(alice.expect_sendack(1).status, sendack::NO_SUCH_TARGET);
    let g = a.ok("PUT", "/v1/groups/g1", Some(json!({"members": ["alice", "bob", "bob"]})));
    assert_eq!(g, json!({"group": "g1", "members": ["alice", "bob"]}));
    // A group SEND (kind 2) right after the answer sees the change.
    alice.send_frame(&send_to_group(2, "g1", b"hi g1"));
    assert_eq!(alice.expect_sendack(2).status, sendack::STORED);
    bob.expect_push_seq(1, b"hi g1");
    bob.ack(1);
    let g = a.ok("POST", "/v1/groups/g1/members", Some(json!({"add": ["carol"], "remove": ["bob"]})));
    assert_eq!(g["members"], json!(["alice", "carol"]));
    alice.send_frame(&send_to_group(3, "g1", b"second"));
    assert_eq!(alice.expect_sendack(3).status, sendack::STORED);
    carol.expect_push_seq(1, b"second");
    bob.expect_silence(QUIET);
    // Not a member any more: forbidden.
    bob.send_frame(&send_to_group(1, "g1", b"let me in"));
    assert_eq!(bob.expect_sendack(1).status, sendack::FORBIDDEN);
    assert_eq!(a.ok("PUT", "/v1/groups/empty", Some(json!({"members": []})))["members"], json!([]));
    assert_eq!(a.ok("DELETE", "/v1/groups/g1", None), json!({"group": "g1", "deleted": true}));
    alice.send_frame(&send_to_group(4, "g1", b"gone"));
    assert_eq!(alice.expect_sendack(4).status, sendack::NO_SUCH_TARGET);
    assert_eq!(a.call("GET", "/v1/groups/g1", None).status, 404);
    assert_eq!(a.call("DELETE", "/v1/groups/g1", None).status, 404);
    assert_eq!(a.call("POST", "/v1/groups/g1/members", Some(json!({"add": ["x"]}))).status, 404);
    assert_eq!(a.call("PUT", "/v1/groups/g2", Some(json!({"members": "alice"}))).status, 400);
}

#[test]
fn groups_mutes_and_idempotency_keys_survive_kill9() {
    let mut s = Config::default().durable("always").start();
    let a = Admin::of(&s);
    a.ok("PUT", "/v1/groups/g1", Some(json!({"members": ["alice", "bob"]})));
    a.ok("DELETE", "/v1/groups/team", None);
    let until = unix_now_ms() + 600_000;
    a.ok("PUT", "/v1/users/alice/mute", Some(json!({"until_ms": until})));
    let body = json!({"to_users": ["bob"], "payload": "once", "idempotency_key": "k-restart"});
    let first = a.publish(body.clone()).json();
    s.kill9();
    s.restart();
    let a = Admin::of(&s);
    assert_eq!(a.ok("GET", "/v1/groups/g1", None)["members"], json!(["alice", "bob"]));
    assert_eq!(a.call("GET", "/v1/groups/team", None).status, 404, "the saved state wins over [groups]");
    assert_eq!(a.ok("GET", "/v1/users/alice", None)["muted_until_ms"], until);
    let (mut alice, _) = s.login("alice", "a1", 0);
    assert_eq!(alice.send_and_ack(1, "bob", b"x").status, sendack::FORBIDDEN, "still muted after kill -9");
    let again = a.publish(body);
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), first, "the key survived the restart");
    let (mut bob, ack) = s.login("bob", "b1", 0);
    assert_eq!(ack.head_seq, 1, "the retry stored nothing");
    bob.expect_push_seq(1, b"once");
}

// ---- metrics ---------------------------------------------------------------

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| panic!("{series} not exported"))
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let m0 = a.metrics();
    for name in [
        "ringgate_connections{transport=\"tls\",state=\"open\"}",
        "ringgate_connections{transport=\"ws\",state=\"handshake\"}",
        "ringgate_handshakes_total{result=\"ok\"}",
        "ringgate_sends_total{status=\"stored\"}",
        "ringgate_publishes_total{status=\"stored\"}",
        "ringgate_pushes_total{kind=\"replay\"}",
        "ringgate_disconnects_total{reason=\"handshake_timeout\"}",
        "ringgate_delivery_seconds_count",
        "ringgate_sendack_seconds_bucket{le=\"+Inf\"}",
        "ringgate_fsync_seconds_sum",
        "ringgate_inbox_messages",
        "ringgate_rejections_total{reason=\"too_large\"}",
        "ringgate_process_open_fds",
        "ringgate_process_max_fds",
        "ringgate_process_resident_memory_bytes",
        "ringgate_uptime_seconds",
    ] {
        get(&m0, name);
    }
    let (mut bob, _) = s.login("bob", "b1", 0);
    let (mut alice, _) = s.login("alice", "a1", 0);
    for i in 1..=3u64 {
        alice.send_ok(i, "bob", b"m");
        bob.expect_push_seq(i, b"m");
        bob.ack(i);
    }
    alice.send_frame(&send_to_group(9, "nope", b"m"));
    assert_eq!(alice.expect_sendack(9).status, sendack::NO_SUCH_TARGET);
    let mut bad = s.client();
    bad.send_frame(&Frame::Connect(Connect::new("not-a-token", "d", 0)));
    let _ = bad.recv_frame(WAIT);
    assert_eq!(a.publish(json!({"to_users": ["bob"], "payload": "p"})).status, 200);
    bob.expect_push_seq(4, b"p");
    bob.ack(4);
    let k = a.ok("DELETE", "/v1/users/bob/connections", None);
    assert_eq!(k["closed"], 1);
    bob.expect_disconnect(reason::NORMAL);

    wait_for("counters to move", || {
        let m = a.metrics();
        let d = |k: &str| get(&m, k) - get(&m0, k);
        d("ringgate_sends_total{status=\"stored\"}") == 3.0
            && d("ringgate_sends_total{status=\"no_such_target\"}") == 1.0
            && d("ringgate_publishes_total{status=\"stored\"}") == 1.0
            && d("ringgate_pushes_total{kind=\"first\"}") == 4.0
            && d("ringgate_handshakes_total{result=\"ok\"}") == 2.0
            && d("ringgate_handshakes_total{result=\"bad_token\"}") == 1.0
            && d("ringgate_disconnects_total{reason=\"normal\"}") == 1.0
            && d("ringgate_sendack_seconds_count") == 4.0
            && d("ringgate_delivery_seconds_count") == 4.0
            && get(&m, "ringgate_connections{transport=\"tls\",state=\"open\"}") == 1.0
            && get(&m, "ringgate_inbox_messages") == 4.0
    });
    let m = a.metrics();
    assert!(get(&m, "ringgate_process_open_fds") > 0.0);
    assert!(get(&m, "ringgate_process_max_fds") >= get(&m, "ringgate_process_open_fds"));

    let mut c = TcpStream::connect(a.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n").unwrap();
    let r = read_resp(&mut c);
    assert!(r.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let t = r.text();
    assert!(t.ends_with("# EOF\n"));
    assert!(t.contains("# TYPE ringgate_sends counter\n") && t.contains("ringgate_sends_total{status=\"stored\"} 3\n"), "{t}");
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let exported: std::collections::HashSet<String> =
        a.metrics().keys().map(|k| k.split('{').next().unwrap().to_string()).collect();
    let dash: Value = serde_json::from_str(include_str!("../deploy/grafana-dashboard.json")).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "expr" {
                        out.push(x.as_str().unwrap_or_default().to_string());
                    } else {
                        walk(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has its panels: {exprs:?}");
    let mut checked = 0;
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("ringgate_") {
            let tail = &rest[at..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let name = &tail[..end];
            // Fleet metrics exist only in fleet mode: tests/fleet.rs checks those panels.
            if name.starts_with("ringgate_fleet_") {
                rest = &tail[end..];
                continue;
            }
            assert!(exported.contains(name), "the dashboard queries {name}, which /metrics does not export ({e})");
            checked += 1;
            rest = &tail[end..];
        }
    }
    assert!(checked >= 10);
}

/// Every fleet metric docs/fleet.md lists has a panel (the names are
/// checked against a fleet node's /metrics by tests/fleet.rs).
#[test]
fn grafana_dashboard_shows_every_documented_fleet_metric() {
    let dash: Value = serde_json::from_str(include_str!("../deploy/grafana-dashboard.json")).expect("dashboard is JSON");
    let text = dash.to_string();
    let doc = include_str!("../docs/fleet.md");
    let table = &doc[doc.find("## Metrics").expect("docs/fleet.md has a Metrics section")..];
    let names: Vec<&str> = table
        .lines()
        .take_while(|l| !l.starts_with("## Engine"))
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|n| n.starts_with("ringgate_fleet_"))
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for n in names {
        assert!(text.contains(n), "docs/fleet.md lists {n}, but no dashboard panel queries it");
    }
}

// ---- readiness during recovery ---------------------------------------------

/// Starts the binary directly (the harness waits for the gateway listener,
/// which these tests must not): `extra` is appended to the config.
fn spawn_raw(cfg: Config, extra: &str, env: &[(&str, &str)]) -> (std::process::Child, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("ringgate.toml");
    std::fs::write(&cfg_path, cfg.to_toml(&dir.path().join("data")) + extra).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringgate"));
    cmd.args(["serve", "--config"]).arg(&cfg_path).env("RUST_LOG", "info").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(l) = line else { break };
            // Keep draining after the reader is gone.
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + STARTUP;
    let admin = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("an admin_addr line");
        if let Some(a) = parse_admin_addr(&line) {
            break a;
        }
    };
    (child, admin, dir)
}

#[test]
fn readyz_is_503_while_recovering() {
    let (mut child, admin, dir) =
        spawn_raw(Config::default().durable("always"), "", &[("RINGGATE_TEST_HOLD_RECOVERY_MS", "3000")]);
    let r = request(admin, "GET", "/readyz", None, None);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("unavailable")));
    assert!(r.text().contains("recovering"), "{}", r.text());
    assert_eq!(request(admin, "GET", "/healthz", None, None).status, 200);
    let token = std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap();
    assert_eq!(request(admin, "GET", "/v1/users/bob", Some(token.trim()), None).status, 503);
    wait_for("readyz 200 after recovery", || request(admin, "GET", "/readyz", None, None).status == 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn publishes_over_the_rate_get_429() {
    let extra = "\n[admin]\npublishes_per_s = 3\ntoken = \"a-configured-admin-token\"\n";
    let (mut child, admin, dir) = spawn_raw(Config::default(), extra, &[]);
    assert!(!dir.path().join("data/admin-token").exists(), "no token file when admin.token is set");
    let tok = Some("a-configured-admin-token");
    wait_for("ready", || request(admin, "GET", "/readyz", None, None).status == 200);
    let body = |i: usize| json!({"to_users": ["bob"], "payload": format!("m{i}"), "idempotency_key": format!("k{i}")});
    let statuses: Vec<u16> = (0..6).map(|i| request(admin, "POST", "/v1/messages", tok, Some(&body(i))).status).collect();
    assert!(statuses.iter().filter(|s| **s == 200).count() <= 4, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // A retry of a stored publish is answered from its key, even over the rate.
    for _ in 0..5 {
        assert_eq!(request(admin, "POST", "/v1/messages", tok, Some(&body(0))).status, 200);
    }
    let r = request(admin, "POST", "/v1/messages", tok, Some(&body(99)));
    if r.status == 429 {
        assert_eq!(r.json()["error"]["code"], "rate_limited");
    }
    let m = parse_prometheus(&request(admin, "GET", "/metrics", None, None).text());
    assert!(get(&m, "ringgate_publishes_total{status=\"rate_limited\"}") >= 1.0);
    assert!(get(&m, "ringgate_rejections_total{reason=\"rate_limited\"}") >= 1.0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(request(admin, "POST", "/v1/messages", tok, Some(&body(100))).status, 200, "the bucket refills");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_request_trickling_in_is_cut_off() {
    let s = Server::default_start();
    let a = Admin::of(&s);
    let mut c = TcpStream::connect(a.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    // One header byte every second: never a whole request.
    let mut answer = None;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(1));
        if c.write_all(b"X").is_err() {
            break;
        }
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let ready = c.peek(&mut b).map(|n| n > 0).unwrap_or(false);
        c.set_nonblocking(false).unwrap();
        if ready {
            answer = Some(read_resp(&mut c));
            break;
        }
    }
    let r = answer.expect("the server answered the slow request");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(14), "cut off near the 10 s deadline, not later");
    // Other clients were served meanwhile, and still are.
    assert_eq!(request(a.addr, "GET", "/healthz", None, None).status, 200);
}
