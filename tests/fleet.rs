//! Fleet mode (FLEET.md) against real `redis-server` processes started here
//! on free ports in temp dirs (`appendonly yes`, `appendfsync always`), and
//! real ringgate nodes: cross-node delivery, replay from another node,
//! dedup across nodes, replacement, admin publish, route, gap repair, and
//! the engine or a node killed with SIGKILL.
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install redis-server`).
//! Without it the tests are skipped with a message, except when
//! `RINGGATE_REQUIRE_REDIS=1` (set by `.ci/run`): then they fail.

mod common;
#[path = "common/fleet.rs"]
mod fleet_common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use fleet_common::*;

// ---- tests ---------------------------------------------------------------

#[test]
fn config_refuses_a_fleet_without_a_shared_route_key() {
    let cfg = ringgate::config::Config::from_toml_str("[fleet]\nredis = [\"redis://127.0.0.1:1\"]\n").unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("route.signing_key_file"), "{e}");
    let cfg = ringgate::config::Config::from_toml_str(
        "[fleet]\nredis = [\"http://x\", \"redis://\"]\nnode_id = \" \"\nheartbeat_ms = 1\nengine_timeout_ms = 0\nmax_engine_inflight = 0\nmax_clock_skew_ms = 600001\n",
    )
    .unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    for k in ["http://x", "\"redis://\"", "node_id", "heartbeat_ms", "engine_timeout_ms", "max_engine_inflight", "max_clock_skew_ms", "signing_key_file"] {
        assert!(e.contains(k), "{k} not reported in: {e}");
    }
    // Unset or empty: single node, nothing to refuse.
    ringgate::config::Config::from_toml_str("[fleet]\nredis = []\n").unwrap().validate().unwrap();
}

#[test]
fn three_nodes_share_inboxes() {
    let Some(bin) = redis_or_skip("three_nodes_share_inboxes") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 3);
    let (n1, n2, n3) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);

    // Every node sees the three (heartbeats), and the route lists them.
    let deadline = Instant::now() + WAIT;
    while f.nodes.iter().any(|s| metric(s, "ringgate_fleet_nodes") != 3.0) {
        assert!(Instant::now() < deadline, "nodes never saw each other");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(route_ids(n1, ""), vec!["n1", "n2", "n3"]);
    let bob_order = route_ids(n1, "?user=bob");
    assert_eq!(route_ids(n2, "?user=bob"), bob_order, "every node gives a user the same order");
    assert_eq!(bob_order.len(), 3);
    assert_eq!(metric(n1, "ringgate_fleet_engine_durable"), 1.0, "appendonly yes + appendfsync always");

    // Cross-node delivery: alice on n1, bob on n2.
    let (mut bob, ack) = n2.login("bob", "b1", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 0));
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let mut ids = Vec::new();
    for i in 1..=5u64 {
        ids.push(alice.send_ok(i, "bob", format!("m{i}").as_bytes()).msg_id);
    }
    let got = collect(&mut bob, 5, WAIT);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "dense seqs, live on another node");
    assert_eq!(got.values().map(|v| v.0).collect::<Vec<_>>(), ids);

    // Replay from a third node: a second device of bob's, from 0.
    let (mut bob2, ack) = n3.login("bob", "b2", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 5), "CONNACK bounds are fleet-wide");
    let got2 = collect(&mut bob2, 5, WAIT);
    assert_eq!(got2, got, "replay on n3 = what n2 delivered");

    // Dedup across nodes: alice's SEND 100 on n1, then a retry on n2 after
    // she moved there (replacement closes her n1 connection with DISCONNECT 6).
    let first = alice.send_ok(100, "bob", b"once");
    let (mut alice2, _) = n2.login("alice", "a1", 0);
    let deadline = Instant::now() + WAIT;
    let mut replaced = false;
    while Instant::now() < deadline && !replaced {
        match alice.recv_frame(deadline.saturating_duration_since(Instant::now())) {
            Ok(Frame::Disconnect { reason, message }) => {
                assert_eq!(reason, 6, "{message}");
                replaced = true;
            }
            Ok(_) => {}
            Err(e) => panic!("alice's n1 connection: {e} before DISCONNECT 6"),
        }
    }
    let retry = alice2.send_ok(100, "bob", b"once");
    assert_eq!(retry.msg_id, first.msg_id, "the retry on another node gets the original SENDACK");
    let got = collect(&mut bob, 2, Duration::from_secs(2));
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![6], "delivered once: {got:?}");

    // Admin publish on n3 reaches bob on n2.
    let (a3, tok3) = admin(n3);
    let (st, body) = http(a3, "POST", "/v1/messages", Some(&tok3), Some(r#"{"to_users":["bob"],"payload":"hi"}"#));
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["seqs"]["bob"], 7, "{body}");
    let got = collect(&mut bob, 1, WAIT);
    assert_eq!(got.get(&7).map(|p| p.1.clone()), Some(b"hi".to_vec()));
    // The dashboard's fleet panels query only what a fleet node exports.
    let (a1, _) = admin(n1);
    let (_, text) = http(a1, "GET", "/metrics", None, None);
    let dash = include_str!("../deploy/grafana-dashboard.json");
    let mut checked = 0;
    for (at, _) in dash.match_indices("ringgate_fleet_") {
        let tail = &dash[at..];
        let name = &tail[..tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len())];
        assert!(text.lines().any(|l| l.starts_with(name)), "the dashboard queries {name}, not exported by a fleet node");
        checked += 1;
    }
    assert!(checked >= 4, "the dashboard has fleet panels");
    for s in &f.nodes {
        s.assert_no_panic();
    }
    drop(f.key_dir);
}

#[test]
fn engine_down_is_sendack_5_and_503_then_recovers() {
    let Some(bin) = redis_or_skip("engine_down_is_sendack_5_and_503_then_recovers") else { return };
    let mut redis = Redis::start(bin);
    let f = Fleet::start(&redis, 2);
    let (n1, n2) = (&f.nodes[0], &f.nodes[1]);
    let (mut bob, _) = n2.login("bob", "b1", 0);
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let before = alice.send_ok(1, "bob", b"before").msg_id;
    assert_eq!(collect(&mut bob, 1, WAIT).get(&1).map(|p| p.0), Some(before));

    redis.kill9();
    let t0 = Instant::now();
    let a = alice.send_and_ack(2, "bob", b"during");
    assert_eq!(a.status, 5, "engine down: SENDACK 5, got {a:?}");
    assert!(t0.elapsed() < Duration::from_millis(700 + 2000), "SENDACK 5 took {:?}", t0.elapsed());
    wait_ready(n1, false);

    redis.restart();
    let t1 = Instant::now();
    wait_ready(n1, true);
    wait_ready(n2, true);
    let back = t1.elapsed();
    // 2 x heartbeat_ms + engine_timeout_ms, plus the machine's slack.
    assert!(back < Duration::from_secs(5), "ready again after {back:?}");
    // The retry of the refused SEND is stored now and reaches bob live.
    let deadline = Instant::now() + WAIT;
    let retried = loop {
        let a = alice.send_and_ack(2, "bob", b"during");
        if a.status == 0 {
            break a.msg_id;
        }
        assert!(Instant::now() < deadline, "never stored after recovery: {a:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let got = collect(&mut bob, 1, WAIT);
    assert_eq!(got.get(&2).map(|p| p.0), Some(retried), "the engine kept seq 1 through kill -9: the next is 2");
    for s in &f.nodes {
        s.assert_no_panic();
    }
}

#[test]
fn engine_kill9_mid_burst_loses_nothing_confirmed() {
    let Some(bin) = redis_or_skip("engine_kill9_mid_burst_loses_nothing_confirmed") else { return };
    let mut redis = Redis::start(bin);
    let f = Fleet::start(&redis, 1);
    let n1 = &f.nodes[0];
    let (mut alice, _) = n1.login("alice", "a1", 0);
    // A burst of SENDs without waiting; the engine dies in the middle.
    let total = 400u64;
    let mut confirmed = HashMap::new();
    for i in 1..=total {
        alice.send_msg(i, "bob", format!("p{i}").as_bytes());
        if i == total / 2 {
            // Some are confirmed, the rest are in flight: now the engine dies.
            for j in 1..=20 {
                let a = alice.expect_sendack(j);
                assert_eq!(a.status, 0, "{a:?}");
                confirmed.insert(a.msg_id, j);
            }
            redis.kill9();
        }
    }
    for i in 21..=total {
        let a = alice.expect_sendack(i);
        if a.status == 0 {
            confirmed.insert(a.msg_id, i);
        } else {
            assert_eq!(a.status, 5, "{a:?}");
        }
    }
    assert!(!confirmed.is_empty(), "some SENDs were confirmed before the kill");
    redis.restart();
    wait_ready(n1, true);
    let (mut bob, ack) = n1.login("bob", "b1", 0);
    let got = collect(&mut bob, ack.head_seq as usize, WAIT);
    let ids: HashSet<u64> = got.values().map(|v| v.0).collect();
    for (m, i) in &confirmed {
        assert!(ids.contains(m), "confirmed SEND {i} (msg_id {m}) lost with the engine's kill -9");
    }
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), (1..=ack.head_seq).collect::<Vec<_>>(), "dense seqs after restart");
    eprintln!("engine kill -9: {} of {total} confirmed, all {} there after restart", confirmed.len(), confirmed.len());
}

#[test]
fn node_kill9_mid_burst_retry_elsewhere_delivers_once() {
    let Some(bin) = redis_or_skip("node_kill9_mid_burst_retry_elsewhere_delivers_once") else { return };
    let redis = Redis::start(bin);
    let mut f = Fleet::start(&redis, 3);
    let (mut bob, _) = f.nodes[2].login("bob", "b1", 0);
    let (mut alice, _) = f.nodes[0].login("alice", "a1", 0);
    let total = 300u64;
    let mut confirmed = HashMap::new();
    for i in 1..=total {
        alice.send_msg(i, "bob", format!("p{i}").as_bytes());
        if i == total / 2 {
            // Some answers are in, some SENDs are being stored right now.
            for j in 1..=20 {
                let a = alice.expect_sendack(j);
                assert_eq!(a.status, 0);
                confirmed.insert(j, a.msg_id);
            }
            f.nodes[0].kill9();
            break;
        }
    }
    // Alice retries everything unanswered on n2, same ids (the ladder's job).
    let (mut alice2, _) = f.nodes[1].login("alice", "a1", 0);
    for i in 1..=total {
        if confirmed.contains_key(&i) {
            continue;
        }
        alice2.send_msg(i, "bob", format!("p{i}").as_bytes());
    }
    for i in 1..=total {
        if confirmed.contains_key(&i) {
            continue;
        }
        let a = alice2.expect_sendack(i);
        assert_eq!(a.status, 0, "retry of {i}: {a:?}");
        confirmed.insert(i, a.msg_id);
    }
    let got = collect(&mut bob, total as usize, WAIT * 2);
    let mut seen = HashMap::new();
    for (seq, (m, _)) in &got {
        assert!(seen.insert(*m, *seq).is_none(), "msg_id {m} delivered twice (seq {seq})");
    }
    for (i, m) in &confirmed {
        assert!(seen.contains_key(m), "confirmed SEND {i} (msg_id {m}) never delivered");
    }
    assert_eq!(got.len(), total as usize, "one inbox entry per SEND");
}

#[test]
fn missed_notifications_are_repaired_from_the_inbox() {
    let Some(bin) = redis_or_skip("missed_notifications_are_repaired_from_the_inbox") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 2);
    let (mut bob, _) = f.nodes[1].login("bob", "b1", 0);
    let (mut alice, _) = f.nodes[0].login("alice", "a1", 0);
    alice.send_ok(1, "bob", b"x");
    assert_eq!(collect(&mut bob, 1, WAIT).len(), 1);
    // Cut every subscriber off: notifications published now are lost.
    let before = metric(&f.nodes[1], "ringgate_fleet_gap_repairs_total");
    let mut sent = 1;
    let t0 = Instant::now();
    while metric(&f.nodes[1], "ringgate_fleet_gap_repairs_total") == before {
        assert!(t0.elapsed() < WAIT, "no gap repair counted");
        redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        sent += 1;
        alice.send_ok(sent, "bob", b"y");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = collect(&mut bob, sent as usize - 1, WAIT);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), (2..=sent).collect::<Vec<_>>(), "every message, in order");
}

#[test]
fn group_sends_fan_out_across_nodes_and_a_dead_nodes_are_completed() {
    let Some(bin) = redis_or_skip("group_sends_fan_out_across_nodes_and_a_dead_nodes_are_completed") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 3);
    // The default test config has group "team" = alice, bob, carol.
    let (mut bob, _) = f.nodes[1].login("bob", "b1", 0);
    let (mut carol, _) = f.nodes[2].login("carol", "c1", 0);
    let (mut alice, _) = f.nodes[0].login("alice", "a1", 0);
    // On one engine a small group's SEND is one script (no durable intent,
    // no claim: nothing can be left half done), counted as `send`.
    let ops = |op: &str| {
        let (a, _) = admin(&f.nodes[0]);
        let (_, text) = http(a, "GET", "/metrics", None, None);
        let prefix = format!("ringgate_fleet_engine_requests_total{{op=\"{op}\",result=\"ok\"}} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse::<u64>().ok()).unwrap_or(0)
    };
    let (claims, sends) = (ops("claim"), ops("send"));
    alice.send_frame(&send_to_group(1, "team", b"hello team"));
    let a = alice.expect_sendack(1);
    assert_eq!(a.status, 0, "{a:?}");
    assert_eq!((ops("claim") - claims, ops("send") - sends), (0, 1), "one SEND script, no intent and no claim");
    for c in [&mut bob, &mut carol] {
        let got = collect(c, 1, WAIT);
        assert_eq!(got.get(&1).map(|p| p.0), Some(a.msg_id), "every member on every node");
    }

    // A group send whose node died after claiming it (the claim is its
    // durable intent: members and payload) and before any copy: written
    // here as that node would have, under a node id that heartbeats no more.
    let msg_id = 4242u64;
    let ts = unix_now_ms() - 10_000;
    let targets = "bob\ncarol";
    let rec = format!("p {msg_id} {ts} dead {} {targets}left behind", targets.len());
    // Bucket (77 mod 100) mod 16 = 13 of a1's records (`scripts::dedup_key`).
    assert_eq!(redis.cmd(&["HSET", "rg:{alice}:d:a1:13", "77", &rec]).as_deref(), Some(":1"));
    assert_eq!(redis.cmd(&["ZADD", "rg:{intents}:z", &ts.to_string(), "alice\na1\n77"]).as_deref(), Some(":1"));
    // No client retries: a survivor completes it.
    for c in [&mut bob, &mut carol] {
        let got = collect(c, 1, WAIT);
        assert_eq!(got.get(&2).map(|p| (p.0, p.1.clone())), Some((msg_id, b"left behind".to_vec())), "{got:?}");
    }
    // And a late retry of it by alice gets the original SENDACK, delivers nothing.
    alice.send_frame(&send_to_group(77, "team", b"left behind"));
    let a = alice.expect_sendack(77);
    assert_eq!((a.status, a.msg_id), (0, msg_id));
    assert!(collect(&mut bob, 1, Duration::from_millis(600)).is_empty(), "delivered once");
    assert_eq!(redis.cmd(&["ZCARD", "rg:{intents}:z"]).as_deref(), Some(":0"), "no intent left");
}

/// A raw RESP subscriber, to see which channel each notification takes.
struct Listener(TcpStream, Vec<u8>);

impl Listener {
    fn subscribe(redis: &Redis, channels: &[&str]) -> Listener {
        let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        let mut req = format!("*{}\r\n$9\r\nSUBSCRIBE\r\n", channels.len() + 1);
        for c in channels {
            req += &format!("${}\r\n{c}\r\n", c.len());
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut l = Listener(s, Vec::new());
        // One confirmation per channel.
        let confirmed = l.read(Duration::from_millis(300)).iter().filter(|(kind, _, _)| kind == "subscribe").count();
        assert_eq!(confirmed, channels.len());
        l
    }

    /// Pushes read until `quiet` passes without one: (kind, channel, payload).
    fn read(&mut self, quiet: Duration) -> Vec<(String, String, String)> {
        self.0.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = [0u8; 65536];
        loop {
            match self.0.read(&mut buf) {
                Ok(n) if n > 0 => self.1.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        // Each push: *3 $kind $channel ($payload | :count).
        let text = String::from_utf8_lossy(&self.1).to_string();
        self.1.clear();
        let mut out = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("*3\r\n") {
            rest = &rest[at + 4..];
            let mut parts = Vec::new();
            for _ in 0..3 {
                let (head, tail) = rest.split_once("\r\n").unwrap();
                if let Some(len) = head.strip_prefix('$') {
                    let len: usize = len.parse().unwrap();
                    parts.push(tail[..len].to_string());
                    rest = &tail[len + 2..];
                } else {
                    parts.push(head[1..].to_string());
                    rest = tail;
                }
            }
            out.push((parts[0].clone(), parts[1].clone(), parts[2].clone()));
        }
        out
    }
}

/// Where the recipient's presence says its devices are, and only there:
/// an append notifies the other nodes holding a device of the recipient
/// on their own channels, not every node on `rg:n`. A stale presence
/// record is covered by the heartbeat's gap repair; while a node of the
/// previous version (which hears only `rg:n`) is live, every node is told.
#[test]
fn notifications_go_only_to_the_nodes_holding_the_recipient() {
    let Some(bin) = redis_or_skip("notifications_go_only_to_the_nodes_holding_the_recipient") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 3);
    let (n1, n2, n3) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    let deadline = Instant::now() + WAIT;
    while f.nodes.iter().any(|s| metric(s, "ringgate_fleet_nodes") != 3.0) {
        assert!(Instant::now() < deadline, "nodes never saw each other");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A heartbeat after every node was seen: targeted from now on.
    std::thread::sleep(Duration::from_millis(450));
    let mut ears = Listener::subscribe(&redis, &["rg:n", "rg:n:n1", "rg:n:n2", "rg:n:n3"]);
    let appends = |ears: &mut Listener| -> Vec<String> {
        ears.read(Duration::from_millis(400)).into_iter().filter(|(k, _, p)| k == "message" && p.starts_with("A ")).map(|(_, c, _)| c).collect()
    };
    let (mut bob, _) = n2.login("bob", "b1", 0);
    let (mut alice, _) = n1.login("alice", "a1", 0);
    alice.send_ok(1, "bob", b"one");
    assert_eq!(collect(&mut bob, 1, WAIT).len(), 1);
    assert_eq!(appends(&mut ears), vec!["rg:n:n2"], "only bob's node, on its own channel");
    // No presence at all (never connected): every node. Known and offline: none.
    alice.send_ok(2, "carol", b"unknown");
    assert_eq!(appends(&mut ears), vec!["rg:n"]);
    drop(n3.login("carol", "c1", 0).0);
    std::thread::sleep(Duration::from_millis(300));
    alice.send_ok(3, "carol", b"offline");
    assert_eq!(appends(&mut ears), Vec::<String>::new());
    // bob on three nodes: the two others told; the sender's own node never
    // (it hands its appends to its cores itself).
    let (mut bob3, _) = n3.login("bob", "b3", 1);
    let (mut bob1, _) = n1.login("bob", "b0", 1);
    alice.send_ok(4, "bob", b"two");
    let mut chans = appends(&mut ears);
    chans.sort();
    assert_eq!(chans, vec!["rg:n:n2", "rg:n:n3"]);
    for c in [&mut bob, &mut bob3, &mut bob1] {
        assert_eq!(collect(c, 1, WAIT).keys().copied().collect::<Vec<_>>(), vec![2]);
    }
    drop(bob1);
    drop(bob3);

    // A presence record that is wrong (bob's b1 is on n2, the engine says
    // n3): n2 is not told, and repairs the gap from the inbox.
    std::thread::sleep(Duration::from_millis(300));
    let repairs = metric(n2, "ringgate_fleet_gap_repairs_total");
    assert!(redis.cmd(&["HSET", "rg:{bob}:p", "b1", "n3 1 0 1 -"]).is_some());
    let t0 = Instant::now();
    alice.send_ok(5, "bob", b"stale");
    assert_eq!(appends(&mut ears), vec!["rg:n:n3"]);
    assert_eq!(collect(&mut bob, 1, WAIT).keys().copied().collect::<Vec<_>>(), vec![3], "delivered by the gap repair");
    eprintln!("stale presence: delivered after {:?} (heartbeat 200 ms)", t0.elapsed());
    assert!(metric(n2, "ringgate_fleet_gap_repairs_total") > repairs);

    // A live node of the previous version (its address without
    // `own-channel`): every notification on `rg:n` again.
    assert!(redis.cmd(&["HSET", "rg:{nodes}:i", "old", "127.0.0.1 1 tcp"]).is_some());
    let beat = |redis: &Redis| assert!(redis.cmd(&["ZADD", "rg:{nodes}:z", &unix_now_ms().to_string(), "old"]).is_some());
    beat(&redis);
    let deadline = Instant::now() + WAIT;
    while metric(n1, "ringgate_fleet_nodes") != 4.0 {
        assert!(Instant::now() < deadline, "the old node never counted");
        beat(&redis);
        std::thread::sleep(Duration::from_millis(50));
    }
    beat(&redis);
    alice.send_ok(6, "bob", b"mixed");
    assert_eq!(appends(&mut ears), vec!["rg:n"], "a mixed fleet: everyone hears it");
    assert_eq!(collect(&mut bob, 1, WAIT).keys().copied().collect::<Vec<_>>(), vec![4]);
    for s in &f.nodes {
        s.assert_no_panic();
    }
}

/// A group larger than one SEND script takes (`rules::ONE_CALL_MAX_TARGETS`,
/// 64) takes the multi-step path on one engine too: the durable intent,
/// the claim, one append per member, done, the intent removed before the
/// SENDACK, each step counted. Every member gets the message once, a
/// retry gets the original SENDACK and stores nothing.
#[test]
fn a_group_beyond_one_script_writes_and_removes_its_intent() {
    let Some(bin) = redis_or_skip("a_group_beyond_one_script_writes_and_removes_its_intent") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 2);
    let (n1, n2) = (&f.nodes[0], &f.nodes[1]);
    let members: Vec<String> = (0..69).map(|i| format!("m{i:02}")).collect();
    let mut all = vec!["alice".to_string()];
    all.extend(members.iter().cloned());
    let (a1, tok1) = admin(n1);
    let body = serde_json::json!({ "members": all }).to_string();
    let (st, answer) = http(a1, "PUT", "/v1/groups/big", Some(&tok1), Some(&body));
    assert_eq!(st, 200, "{answer}");
    let (mut near, _) = n1.login("m00", "d", 0);
    let (mut far, _) = n2.login("m68", "d", 0);
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let ops = |op: &str| metric(n1, &format!("ringgate_fleet_engine_requests_total{{op=\"{op}\",result=\"ok\"}}"));
    let before: Vec<f64> = ["send", "claim", "append", "done"].iter().map(|o| ops(o)).collect();
    alice.send_frame(&send_to_group(1, "big", b"to 69"));
    let a = alice.expect_sendack(1);
    assert_eq!(a.status, 0, "{a:?}");
    // Forgotten before the SENDACK: no sweep has had to see it.
    assert_eq!(redis.cmd(&["ZCARD", "rg:{intents}:z"]).as_deref(), Some(":0"), "the intent is removed once every copy is in");
    let after: Vec<f64> = ["send", "claim", "append", "done"].iter().map(|o| ops(o)).collect();
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, vec![0.0, 2.0, 69.0, 2.0], "send, claim (intent + claim), append (one per member), done (done + intent removed)");
    for m in &members {
        assert_eq!(redis.cmd(&["ZCARD", &format!("rg:{{{m}}}:e")]).as_deref(), Some(":1"), "{m} holds one copy");
        assert_eq!(redis.cmd(&["ZSCORE", &format!("rg:{{{m}}}:i"), "alice\na1\n1"]).as_deref(), Some("$1"), "{m}'s copy is this SEND's");
    }
    // Bucket (1 mod 100) mod 16 = 1: marked done, targets and payload dropped.
    // (`d msg_id ts`: about 35 bytes; pending, it held 69 names and the payload.)
    let len = redis.cmd(&["HGET", "rg:{alice}:d:a1:1", "1"]).and_then(|l| l.strip_prefix('$')?.parse::<usize>().ok());
    assert!(len.is_some_and(|n| n < 40), "the dedup record is marked done: {len:?} bytes");
    for c in [&mut near, &mut far] {
        let got = collect(c, 1, WAIT);
        assert_eq!(got.iter().map(|(s, p)| (*s, p.0)).collect::<Vec<_>>(), vec![(1, a.msg_id)], "live on both nodes");
    }
    // A retry: the original SENDACK, no copy, no intent left.
    alice.send_frame(&send_to_group(1, "big", b"to 69"));
    let r = alice.expect_sendack(1);
    assert_eq!((r.status, r.msg_id), (0, a.msg_id));
    assert_eq!(redis.cmd(&["ZCARD", "rg:{intents}:z"]).as_deref(), Some(":0"));
    assert!(collect(&mut far, 1, Duration::from_millis(600)).is_empty(), "delivered once");
    for m in &members {
        assert_eq!(redis.cmd(&["ZCARD", &format!("rg:{{{m}}}:e")]).as_deref(), Some(":1"), "{m}: the retry stored nothing");
    }
    for s in &f.nodes {
        s.assert_no_panic();
    }
}

/// A rolling upgrade: nodes of the previous version kept a device's dedup
/// records in one hash (`rg:{u}:d:{device}`, record `d msg_id ts node 0 `
/// once done, `p msg_id ts node len(targets) targets payload` while
/// pending). A retry that reaches this version finds them there: the
/// original SENDACK and no second copy; a pending one is finished once,
/// under the old msg_id; a group send an old node left half done is
/// completed by a survivor.
#[test]
fn a_retry_of_a_send_an_older_version_stored_gets_its_answer() {
    let Some(bin) = redis_or_skip("a_retry_of_a_send_an_older_version_stored_gets_its_answer") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 2);
    let ok = |args: &[&str]| assert!(redis.cmd(args).is_some_and(|r| r.starts_with(':') || r == "+OK"), "{args:?}");
    // What an old node wrote for alice/a1's SEND 5 to bob (msg_id 9005),
    // stored and answered, and for SEND 6 (msg_id 9006), claimed by an old
    // node that died before appending. (The old node also published SEND
    // 5; bob is not connected yet and replays it.)
    let ts = unix_now_ms() - 5_000;
    ok(&["SET", "rg:{bob}:h", "1"]);
    ok(&["ZADD", "rg:{bob}:e", "1", &format!("9005 {ts} 5 aliceold")]);
    ok(&["ZADD", "rg:{bob}:i", "1", "alice\na1\n5"]);
    ok(&["HSET", "rg:{alice}:d:a1", "5", &format!("d 9005 {ts} old 0 ")]);
    ok(&["HSET", "rg:{alice}:d:a1", "6", &format!("p 9006 {ts} old 3 bob")]);
    ok(&["RPUSH", "rg:{alice}:q:a1", "5", "6"]);
    // And a group send (msg_id 9077) an old node claimed, with its intent,
    // and died before any copy.
    ok(&["HSET", "rg:{alice}:d:a1", "77", &format!("p 9077 {ts} old 9 bob\ncarolleft behind")]);

    let (mut bob, ack) = f.nodes[1].login("bob", "b1", 0);
    assert_eq!(ack.head_seq, 1);
    assert_eq!(collect(&mut bob, 1, WAIT).get(&1).map(|p| p.0), Some(9005));
    let (mut alice, _) = f.nodes[0].login("alice", "a1", 0);
    let retry = alice.send_ok(5, "bob", b"old");
    assert_eq!(retry.msg_id, 9005, "the answer the old node recorded");
    let pending = alice.send_ok(6, "bob", b"old");
    assert_eq!(pending.msg_id, 9006, "a pending old claim is finished under its msg_id");
    let got = collect(&mut bob, 2, Duration::from_millis(800));
    assert_eq!(got.iter().map(|(s, p)| (*s, p.0)).collect::<Vec<_>>(), vec![(2, 9006)], "SEND 5 not again, SEND 6 once");
    // The finished one is done in this version's bucket; the old hash is only read.
    assert_eq!(redis.cmd(&["HGET", "rg:{alice}:d:a1:6", "6"]).as_deref(), Some(&*format!("${}", format!("d 9006 {ts}").len())));
    assert_eq!(alice.send_ok(6, "bob", b"old").msg_id, 9006);
    assert_eq!(alice.send_ok(5, "bob", b"old").msg_id, 9005);
    assert!(collect(&mut bob, 1, Duration::from_millis(600)).is_empty(), "retried again: still nothing new");
    assert_eq!(redis.cmd(&["ZCARD", "rg:{bob}:e"]).as_deref(), Some(":2"), "one inbox entry per SEND");
    assert_eq!(redis.cmd(&["HLEN", "rg:{alice}:d:a1"]).as_deref(), Some(":3"), "the old hash is not written");

    // The old node's group intent: a survivor completes it once.
    let (mut carol, _) = f.nodes[1].login("carol", "c1", 0);
    ok(&["ZADD", "rg:{intents}:z", &ts.to_string(), "alice\na1\n77"]);
    let got = collect(&mut bob, 1, WAIT);
    assert_eq!(got.get(&3).map(|p| (p.0, p.1.clone())), Some((9077, b"left behind".to_vec())), "{got:?}");
    assert_eq!(collect(&mut carol, 1, WAIT).get(&1).map(|p| p.0), Some(9077));
    alice.send_frame(&send_to_group(77, "team", b"left behind"));
    let a = alice.expect_sendack(77);
    assert_eq!((a.status, a.msg_id), (0, 9077), "the late retry gets the original SENDACK");
    assert!(collect(&mut bob, 1, Duration::from_millis(600)).is_empty(), "delivered once");
    assert_eq!(redis.cmd(&["ZCARD", "rg:{intents}:z"]).as_deref(), Some(":0"), "no intent left");
    // A fresh SEND still gets a fresh answer.
    assert_ne!(alice.send_ok(7, "bob", b"new").msg_id, 9005);
    assert_eq!(collect(&mut bob, 1, WAIT).keys().copied().collect::<Vec<_>>(), vec![4]);
    for s in &f.nodes {
        s.assert_no_panic();
    }
}


#[test]
fn kick_closes_the_users_connections_on_every_node() {
    let Some(bin) = redis_or_skip("kick_closes_the_users_connections_on_every_node") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 3);
    let deadline = Instant::now() + WAIT;
    while f.nodes.iter().any(|s| metric(s, "ringgate_fleet_nodes") != 3.0) {
        assert!(Instant::now() < deadline, "nodes never saw each other");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut bobs: Vec<Client> = f.nodes.iter().enumerate().map(|(i, s)| s.login("bob", &format!("b{i}"), 0).0).collect();
    let (mut alice, _) = f.nodes[1].login("alice", "a1", 0);
    let (a2, tok2) = admin(&f.nodes[1]);
    let (st, body) = http(a2, "DELETE", "/v1/users/bob/connections", Some(&tok2), None);
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["closed"], 3, "bob's connections on all three nodes: {body}");
    for (i, b) in bobs.iter_mut().enumerate() {
        let deadline = Instant::now() + WAIT;
        loop {
            match b.recv_frame(deadline.saturating_duration_since(Instant::now())) {
                Ok(Frame::Disconnect { reason, message }) => {
                    assert_eq!((reason, message.as_str()), (0, "closed by operator"), "bob on n{}", i + 1);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("bob on n{}: {e} before DISCONNECT 0", i + 1),
            }
        }
    }
    // Only bob: alice on the asked node still sends; once bob's sockets
    // are gone, nothing is left to close on any node.
    alice.send_ok(1, "carol", b"still here");
    drop(bobs);
    let deadline = Instant::now() + WAIT;
    loop {
        let (st, body) = http(a2, "DELETE", "/v1/users/bob/connections", Some(&tok2), None);
        assert_eq!(st, 200, "{body}");
        if serde_json::from_str::<serde_json::Value>(&body).unwrap()["closed"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "bob's closed connections still counted: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for s in &f.nodes {
        s.assert_no_panic();
    }
}

#[test]
fn msg_ids_are_unique_across_nodes() {
    let Some(bin) = redis_or_skip("msg_ids_are_unique_across_nodes") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 2);
    // Two senders on two nodes at once, as fast as SENDACKs come back, so
    // both nodes mint in the same milliseconds on the same core index.
    let ids: Vec<Vec<u64>> = std::thread::scope(|sc| {
        let hs: Vec<_> = f
            .nodes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                sc.spawn(move || {
                    let (mut c, _) = s.login(&format!("sender{i}"), "d1", 0);
                    let mut ids = Vec::new();
                    for batch in 0..20u64 {
                        for k in 0..10 {
                            c.send_msg(batch * 10 + k + 1, "bob", b"x");
                        }
                        for k in 0..10 {
                            let a = c.expect_sendack(batch * 10 + k + 1);
                            assert_eq!(a.status, 0, "{a:?}");
                            ids.push(a.msg_id);
                        }
                    }
                    ids
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: HashSet<u64> = ids.iter().flatten().copied().collect();
    assert_eq!(all.len(), 400, "two nodes handed out the same msg_id");
    // Each node's ids carry its own leased index (bits 8..16).
    let index = |v: &[u64]| v.iter().map(|m| (m >> 8) & 0xff).collect::<HashSet<u64>>();
    let (a, b) = (index(&ids[0]), index(&ids[1]));
    assert!(a.len() == 1 && b.len() == 1 && a != b, "node indexes {a:?} and {b:?}");
    // The time part is the SENDACK's timestamp, as on one node.
    let (mut c, _) = f.nodes[0].login("sender0", "d1", 0);
    let s = c.send_ok(1000, "bob", b"t");
    assert_eq!(s.msg_id >> 20, s.timestamp_ms);
}


// ---- measurement (not in the default run) --------------------------------

/// utime + stime of a process, seconds.
/// A single engine stores a client SEND in one engine call (claim,
/// append, done in one script), and a sending device's dedup records are
/// bounded: the last 1024 ids, in small buckets the engine keeps compact,
/// expiring after the device stops sending.
#[test]
fn one_call_sends_and_bounded_dedup_records() {
    let Some(bin) = redis_or_skip("one_call_sends_and_bounded_dedup_records") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 2);
    let (n1, n2) = (&f.nodes[0], &f.nodes[1]);
    let (mut bob, _) = n2.login("bob", "b1", 0);
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let total = 1100u64;
    let mut raw = alice.raw_socket();
    let mut first = None;
    for i in 1..=total {
        raw.write_all(&send_to_user(i, "bob", b"x").encode()).unwrap();
        if i % 100 == 0 {
            for j in i - 99..=i {
                let a = alice.expect_sendack(j);
                assert_eq!(a.status, 0);
                if j == total {
                    first = Some(a.msg_id);
                }
            }
        }
    }
    assert_eq!(collect(&mut bob, total as usize, WAIT).len(), total as usize, "every SEND delivered across nodes");
    // One engine call per SEND: no claim or done step (the multi-step path).
    assert!(metric(n1, "ringgate_fleet_engine_requests_total{op=\"send\",result=\"ok\"}") >= total as f64);
    assert_eq!(metric(n1, "ringgate_fleet_engine_requests_total{op=\"claim\"") + metric(n1, "ringgate_fleet_engine_requests_total{op=\"done\""), 0.0);

    // The last 1024 ids, in 16 buckets, each listpack-encoded and expiring.
    let int = |args: &[&str]| redis.cmd(args).and_then(|l| l.trim_start_matches(':').parse::<i64>().ok()).unwrap_or(-99);
    assert_eq!(int(&["LLEN", "rg:{alice}:q:a1"]), 1024, "ids queued for eviction");
    let mut held = 0;
    for b in 0..16 {
        let k = format!("rg:{{alice}}:d:a1:{b}");
        held += int(&["HLEN", &k]);
        // `$8`: the bulk string `listpack` (a `hashtable` is `$9`).
        assert_eq!(redis.cmd(&["OBJECT", "ENCODING", &k]).as_deref(), Some("$8"), "bucket {b} is not compact");
        let ttl = int(&["PTTL", &k]);
        assert!(ttl > 0 && ttl <= 604_800_000, "bucket {b} must expire after the retention age: PTTL {ttl}");
    }
    assert_eq!(held, 1024, "records beyond the window are evicted");
    let ttl = int(&["PTTL", "rg:{alice}:q:a1"]);
    assert!(ttl > 0 && ttl <= 604_800_000, "the queue expires with its records: {ttl}");

    // Within the window a retry gets the original SENDACK and is not
    // delivered again, on the other node too.
    drop(raw);
    let (mut alice2, _) = n2.login("alice", "a1", 0);
    assert_eq!(alice2.send_ok(total, "bob", b"x").msg_id, first.unwrap(), "the original SENDACK");
    assert!(collect(&mut bob, 1, Duration::from_millis(800)).is_empty(), "a retry is not delivered again");
    for s in &f.nodes {
        s.assert_no_panic();
    }
}

fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

struct Run {
    rate: u64,
    sent: u64,
    delivered: u64,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_msg: f64,
}

/// `rate` SENDs per second for `secs` from `sender` (user "s") to the
/// receiver ("r", on `receiver`); latency SEND written → PUSH read; CPU of
/// `pids` over the run.
fn paced(sender: &Server, receiver: &Server, pids: &[u32], rate: u64, secs: u64, tag: &str) -> Run {
    let (mut rx, _) = receiver.login(&format!("r{tag}"), "r1", 0);
    let (mut tx, _) = sender.login(&format!("s{tag}"), "s1", 0);
    let mut raw = tx.raw_socket();
    let start = Instant::now();
    let total = rate * secs;
    let to = format!("r{tag}");
    let acks = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut ok = 0u64;
        while n < total {
            match tx.recv_frame(WAIT) {
                Ok(Frame::SendAck(a)) => {
                    n += 1;
                    ok += (a.status == 0) as u64;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        ok
    });
    let cpu0: f64 = pids.iter().map(|p| cpu_s(*p)).sum();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let gap = Duration::from_secs_f64(1.0 / rate as f64);
        for i in 0..total {
            let due = t0 + gap * i as u32;
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            let mut payload = (start.elapsed().as_nanos() as u64).to_be_bytes().to_vec();
            payload.resize(64, b'x');
            raw.write_all(&send_to_user(i + 1, &to, &payload).encode()).unwrap();
        }
    });
    let mut lat = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(secs) + WAIT;
    let mut last_seq = 0;
    while (lat.len() as u64) < total && Instant::now() < deadline {
        match rx.recv_frame(Duration::from_secs(2)) {
            Ok(Frame::Push(p)) => {
                let now = start.elapsed().as_nanos() as u64;
                let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                lat.push(now.saturating_sub(sent) as f64 / 1e6);
                if p.seq > last_seq + 16 || lat.len() as u64 == total {
                    rx.send_frame(&Frame::PushAck { seq: p.seq });
                    last_seq = p.seq;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    writer.join().unwrap();
    let ok = acks.join().unwrap();
    let cpu1: f64 = pids.iter().map(|p| cpu_s(*p)).sum();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |x: f64| lat.get(((lat.len() as f64 * x) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN);
    let delivered = lat.len() as u64;
    Run {
        rate,
        sent: ok,
        delivered,
        msgs_per_s: delivered as f64 / elapsed,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        cpu_us_per_msg: (cpu1 - cpu0) * 1e6 / delivered.max(1) as f64,
    }
}

fn used_memory(redis: &Redis) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// `cargo test --release --test fleet -- --ignored fleet_measure --nocapture`:
/// cross-node push on 3 nodes + Redis vs one node on its local log
/// (fsync always) in the same run, and the engine's memory per message and
/// per user.
#[test]
#[ignore]
fn fleet_measure() {
    let Some(bin) = redis_or_skip("fleet_measure") else { return };
    let redis = Redis::start(bin);
    let f = Fleet::start(&redis, 3);
    let single = Config::default().tls(false).workers(2).durable("always").start();
    let rpid = redis.child.as_ref().unwrap().id();
    let fleet_pids: Vec<u32> = f.nodes.iter().map(|s| s.pid()).chain([rpid]).collect();
    let secs = std::env::var("FLEET_MEASURE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let rates: Vec<u64> = std::env::var("FLEET_MEASURE_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![2000, 10000]);
    eprintln!("| setup | rate msg/s | confirmed | delivered | msgs/s | p50 ms | p99 ms | CPU µs/msg (servers) |");
    eprintln!("|---|---|---|---|---|---|---|---|");
    for (i, rate) in rates.iter().enumerate() {
        for (name, s, r, pids) in [
            ("fleet cross-node (n1 -> n2, + Redis)", &f.nodes[0], &f.nodes[1], fleet_pids.clone()),
            ("single node, local log fsync always", &single, &single, vec![single.pid()]),
        ] {
            let x = paced(s, r, &pids, *rate, secs, &format!("{i}{}", name.len()));
            eprintln!(
                "| {name} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} |",
                x.rate, x.sent, x.delivered, x.msgs_per_s, x.p50_ms, x.p99_ms, x.cpu_us_per_msg
            );
        }
    }
    // Engine memory: 20,000 messages of 64 bytes into 1,000 offline inboxes.
    let m0 = used_memory(&redis);
    let (mut tx, _) = f.nodes[0].login("memsender", "m1", 0);
    let mut raw = tx.raw_socket();
    let n_users = 1000u64;
    let per = 20u64;
    for i in 0..n_users * per {
        raw.write_all(&send_to_user(i + 1, &format!("off{}", i % n_users), &[b'x'; 64]).encode()).unwrap();
        if i % 500 == 499 {
            for j in i - 498..=i + 1 {
                tx.expect_sendack(j);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let m1 = used_memory(&redis);
    let total = n_users * per;
    eprintln!(
        "engine memory: {} bytes for {total} messages (64 B payload) in {n_users} inboxes = {:.0} B/message (incl. the sender's dedup record), {:.0} B/user at {per} messages",
        m1 - m0,
        (m1 - m0) as f64 / total as f64,
        (m1 - m0) as f64 / n_users as f64
    );
}
