//! Fleet mode when the engine comes back with less data than it confirmed: a FLUSHALL, a restart without AOF, a failover to a replica that lagged.
//!
//! Real `redis-server` processes on free ports in temp dirs and real
//! ringgate nodes (FLEET.md "Seqs are never reused"): a device that
//! presents a `last_seq` above the engine's head makes the CONNECT raise
//! the head past it first, so new messages get higher seqs and reach the
//! device instead of being dropped as duplicates; the raise is logged and
//! counted (`ringgate_fleet_seq_floor_raises_total`).
//!
//! Devices offline during the loss present their `last_seq` at CONNECT
//! (the CONNECT floor); a device that stays connected through it is
//! covered by its node (`a_device_connected_through_a_flushall_...`): the
//! node's mirror is ahead of the engine, so it raises the head past the
//! mirror and moves messages appended meanwhile at seqs the device has
//! above it. Messages confirmed by the old
//! primary after the replica stopped following are lost with it (the
//! engine was not run durably across the failover: Redis replication is
//! asynchronous); a client retry of such a SEND is stored again.

mod common;
#[path = "common/fleet.rs"]
mod fleet_common;

use std::time::Duration;

use common::*;
use fleet_common::*;

#[test]
fn seq_floor_is_raised_after_flushall_and_after_a_restart_without_aof() {
    let Some(bin) = redis_or_skip("seq_floor_is_raised_after_flushall_and_after_a_restart_without_aof") else { return };
    // Not durable on purpose: a restart loses everything.
    let mut redis = Redis::with_args(bin, ["--appendonly", "no"].map(String::from).to_vec());
    let key_dir = tempfile::tempdir().unwrap();
    let key = shared_key(key_dir.path());
    let n1 = node_config(&[redis.url()], "n1", &key, "").start();
    let n2 = node_config(&[redis.url()], "n2", &key, "").start();
    wait_ready(&n1, true);
    wait_ready(&n2, true);
    assert_eq!(metric(&n1, "ringgate_fleet_engine_durable"), 0.0, "appendonly no allows loss");
    assert!(n1.stderr_tail().contains("fleet engine settings allow loss"), "the warning names the window:\n{}", n1.stderr_tail());

    let (mut alice, _) = n1.login("alice", "a1", 0);
    let (mut bob, _) = n2.login("bob", "b1", 0);
    for i in 1..=5u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    let got = collect(&mut bob, 5, WAIT);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    drop(bob);

    // The engine forgets everything: bob's inbox head is 0 there now.
    assert_eq!(redis.cmd(&["FLUSHALL"]).as_deref(), Some("+OK"));
    assert_eq!(metric(&n2, "ringgate_fleet_seq_floor_raises_total"), 0.0);
    let (mut bob, ack) = n2.login("bob", "b1", 5);
    assert_eq!((ack.oldest_seq, ack.head_seq), (6, 5), "the head was raised to the last_seq presented, nothing below it kept");
    assert_eq!(metric(&n2, "ringgate_fleet_seq_floor_raises_total"), 1.0, "the raise is counted");
    assert!(n2.stderr_tail().contains("head raised past it"), "the raise is logged:\n{}", n2.stderr_tail());
    let after = alice.send_ok(6, "bob", b"after the flush");
    let got = collect(&mut bob, 1, WAIT);
    assert_eq!(got.get(&6).map(|p| (p.0, p.1.clone())), Some((after.msg_id, b"after the flush".to_vec())), "a new seq, delivered: {got:?}");
    // Another device of bob's, on the other node, from 0: the engine's view.
    let (mut bob2, ack) = n1.login("bob", "b2", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (6, 6));
    assert_eq!(collect(&mut bob2, 1, WAIT).keys().copied().collect::<Vec<_>>(), vec![6]);
    drop(bob);
    drop(bob2);

    // A restart of an engine without AOF: the same, through the node's reconnect.
    redis.kill9();
    redis.spawn();
    wait_ready(&n1, true);
    wait_ready(&n2, true);
    // `/readyz` may still say 200 from before the kill when the node has
    // not noticed it yet; its CONNACK is then 3 (busy: the engine call
    // failed), and a device tries again, as this one does.
    let (mut bob, ack) = login_when_served(&n1, "bob", "b1", 6);
    assert_eq!((ack.oldest_seq, ack.head_seq), (7, 6));
    assert_eq!(metric(&n1, "ringgate_fleet_seq_floor_raises_total"), 1.0);
    let next = alice.send_ok(7, "bob", b"after the restart");
    let got = collect(&mut bob, 1, WAIT);
    assert_eq!(got.get(&7).map(|p| p.0), Some(next.msg_id), "{got:?}");
    // A device already past the head raises nothing.
    drop(bob);
    let (_bob, ack) = n2.login("bob", "b1", 7);
    assert_eq!(ack.head_seq, 7);
    assert_eq!(metric(&n2, "ringgate_fleet_seq_floor_raises_total"), 1.0, "no raise when the engine knows the seq");
    n1.assert_no_panic();
    n2.assert_no_panic();
}

#[test]
fn failover_to_a_lagging_replica_reuses_no_seq() {
    let Some(bin) = redis_or_skip("failover_to_a_lagging_replica_reuses_no_seq") else { return };
    let mut primary = Redis::with_args(bin.clone(), durable_args());
    let mut args = durable_args();
    args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), primary.port.to_string()]);
    let mut replica = Redis::with_args(bin.clone(), args);
    let deadline = std::time::Instant::now() + WAIT;
    while !replica.info("replication").contains("master_link_status:up") {
        assert!(std::time::Instant::now() < deadline, "the replica never synced:\n{}", replica.info("replication"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_dir = tempfile::tempdir().unwrap();
    let key = shared_key(key_dir.path());
    let n1 = node_config(&[primary.url()], "n1", &key, "").start();
    wait_ready(&n1, true);

    // Replicated: bob's 1..3 (bob online, acking) and dave's 1..3 (offline).
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let (mut bob, _) = n1.login("bob", "b1", 0);
    let mut dave_ids = Vec::new();
    for i in 1..=3u64 {
        alice.send_ok(i, "bob", format!("b{i}").as_bytes());
        dave_ids.push(alice.send_ok(100 + i, "dave", format!("d{i}").as_bytes()).msg_id);
    }
    assert_eq!(collect(&mut bob, 3, WAIT).len(), 3);
    assert_eq!(primary.cmd(&["WAIT", "1", "5000"]).as_deref(), Some(":1"), "the replica has every write so far");
    // The replica stops following (it will lag by everything from here on).
    assert_eq!(replica.cmd(&["REPLICAOF", "NO", "ONE"]).as_deref(), Some("+OK"));
    for i in 4..=5u64 {
        alice.send_ok(i, "bob", format!("b{i}").as_bytes());
        alice.send_ok(100 + i, "dave", format!("d{i}").as_bytes());
    }
    let got = collect(&mut bob, 2, WAIT);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![4, 5], "bob took 4 and 5 from the primary");
    drop(bob);

    // Failover: the primary dies; the replica's data comes up at the
    // address the node uses (what a VIP or DNS switch does).
    primary.kill9();
    let port = primary.port;
    replica.kill9();
    let mut promoted = Redis { bin, child: None, port, dir: tempfile::tempdir().unwrap(), args: durable_args() };
    std::mem::swap(&mut promoted.dir, &mut replica.dir);
    promoted.spawn();
    assert_eq!(promoted.cmd(&["GET", "rg:{bob}:h"]).as_deref(), Some("$1"), "bob's head survived (as 3)");
    wait_ready(&n1, true);

    // bob comes back at 5: the engine's head is 3; it is raised, and what
    // comes next is 6, delivered (not dropped as a seq bob already has).
    let (mut bob, ack) = n1.login("bob", "b1", 5);
    assert_eq!((ack.oldest_seq, ack.head_seq), (6, 5));
    assert_eq!(metric(&n1, "ringgate_fleet_seq_floor_raises_total"), 1.0);
    let after = alice.send_ok(6, "bob", b"after the failover");
    let got = collect(&mut bob, 1, WAIT);
    assert_eq!(got.get(&6).map(|p| (p.0, p.1.clone())), Some((after.msg_id, b"after the failover".to_vec())), "{got:?}");
    // dave never connected: what the replica holds is delivered (4 and 5
    // were confirmed by the primary alone and are gone with it).
    let (mut dave, ack) = n1.login("dave", "d1", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 3));
    let got = collect(&mut dave, 3, WAIT);
    assert_eq!(got.values().map(|p| p.0).collect::<Vec<_>>(), dave_ids, "every confirmed message the engine still holds");
    // Messages to dave continue above the engine's head: seq 4 is the
    // first dave sees with that number.
    let d = alice.send_ok(200, "dave", b"new");
    assert_eq!(collect(&mut dave, 1, WAIT).get(&4).map(|p| p.0), Some(d.msg_id));
    n1.assert_no_panic();
}

#[test]
fn a_device_connected_through_a_flushall_gets_the_next_messages() {
    let Some(bin) = redis_or_skip("a_device_connected_through_a_flushall_gets_the_next_messages") else { return };
    let redis = Redis::start(bin);
    let key_dir = tempfile::tempdir().unwrap();
    let key = shared_key(key_dir.path());
    let n1 = node_config(&[redis.url()], "n1", &key, "").start();
    let n2 = node_config(&[redis.url()], "n2", &key, "").start();
    wait_ready(&n1, true);
    wait_ready(&n2, true);
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let (mut bob, _) = n2.login("bob", "b1", 0);
    for i in 1..=5u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    assert_eq!(collect(&mut bob, 5, WAIT).keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

    // The engine forgets everything while bob stays connected, and alice
    // sends at once: the engine hands out seqs 1.. again, which bob has.
    assert_eq!(redis.cmd(&["FLUSHALL"]).as_deref(), Some("+OK"));
    let sent: Vec<u64> = (6..=8u64).map(|i| alice.send_ok(i, "bob", format!("m{i}").as_bytes()).msg_id).collect();
    let got = collect(&mut bob, 3, WAIT);
    assert!(got.keys().all(|s| *s > 5), "new messages above every seq bob has: {got:?}");
    let mut ids: Vec<u64> = got.values().map(|p| p.0).collect();
    ids.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(ids, want, "every message sent after the flush reaches bob, once: {got:?}");
    assert!(metric(&n2, "ringgate_fleet_seq_floor_raises_total") >= 1.0, "the raise is counted");
    assert!(n2.stderr_tail().contains("messages appended meanwhile moved above it"), "and logged:\n{}", n2.stderr_tail());
    let top = *got.keys().max().unwrap();

    // Again, now with nothing sent until the node's heartbeat has seen the
    // engine's head below bob's (the raise happens before any append).
    let before = metric(&n2, "ringgate_fleet_seq_floor_raises_total");
    assert_eq!(redis.cmd(&["FLUSHALL"]).as_deref(), Some("+OK"));
    let t0 = std::time::Instant::now();
    while metric(&n2, "ringgate_fleet_seq_floor_raises_total") == before {
        assert!(t0.elapsed() < WAIT, "the heartbeat never raised the floor");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(redis.cmd(&["GET", "rg:{bob}:h"]).as_deref(), Some(&format!("${}", top.to_string().len())[..]), "head raised to bob's");
    let next = alice.send_ok(20, "bob", b"after the second flush");
    let got = collect(&mut bob, 1, WAIT);
    assert_eq!(got.get(&(top + 1)).map(|p| p.0), Some(next.msg_id), "{got:?}");
    // A second device of bob's connecting now sees the engine's view.
    let (_b2, ack) = n1.login("bob", "b2", 0);
    assert_eq!(ack.head_seq, top + 1);
    n1.assert_no_panic();
    n2.assert_no_panic();
}

/// A device connected through a loss whose node holds nothing of its
/// inbox yet (it connected with a cursor and nothing new came since): the
/// messages appended after the loss get seqs below the first one the node
/// would mirror. They are recognised by their time (appended after the
/// device's CONNECT) and moved above its cursor.
#[test]
fn a_device_connected_with_a_cursor_through_a_flushall_gets_the_next_messages() {
    let Some(bin) = redis_or_skip("a_device_connected_with_a_cursor_through_a_flushall_gets_the_next_messages") else { return };
    let redis = Redis::start(bin);
    let key_dir = tempfile::tempdir().unwrap();
    let key = shared_key(key_dir.path());
    // A heartbeat long enough that the sends below reach the engine before
    // the node's gap check sees the flush (this is the notification path).
    let n1 = node_config_hb(&[redis.url()], "n1", &key, 3000, "").start();
    let n2 = node_config_hb(&[redis.url()], "n2", &key, 3000, "").start();
    wait_ready(&n1, true);
    wait_ready(&n2, true);
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let (mut bob, _) = n1.login("bob", "b1", 0);
    for i in 1..=5u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    assert_eq!(collect(&mut bob, 5, WAIT).keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    drop(bob);
    // Back with its cursor on the other node: n2 mirrors bob from seq 6
    // on, empty.
    let (mut bob, ack) = n2.login("bob", "b1", 5);
    assert_eq!(ack.head_seq, 5);
    // Once n1 has forgotten its mirror of bob (at its next heartbeat: no
    // device of bob's there; a node still holding seqs 1..5 would see
    // other messages at them and act on that) and later than the clock
    // margin after bob's CONNECT, the engine forgets everything and alice
    // sends: seqs 1..3 again, below bob's cursor.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(redis.cmd(&["FLUSHALL"]).as_deref(), Some("+OK"));
    let sent: Vec<u64> = (6..=8u64).map(|i| alice.send_ok(i, "bob", format!("m{i}").as_bytes()).msg_id).collect();
    let got = collect(&mut bob, 3, WAIT);
    assert!(got.keys().all(|s| *s > 5), "new messages above bob's cursor: {got:?}");
    let mut ids: Vec<u64> = got.values().map(|p| p.0).collect();
    ids.sort();
    assert_eq!(ids, sent, "every message sent after the flush reaches bob, once: {got:?}");
    assert!(metric(&n2, "ringgate_fleet_seq_floor_raises_total") >= 1.0, "the raise is counted");
    let top = *got.keys().max().unwrap();

    // Again, and now the notifications are lost too (the subscribers'
    // connections die with the loss, as in a failover): only the node's
    // gap check sees the engine's head below bob's. The messages it finds
    // at seqs bob has — below its node's mirror and within it — move
    // above them.
    assert_eq!(redis.cmd(&["FLUSHALL"]).as_deref(), Some("+OK"));
    assert!(redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).is_some_and(|r| r.starts_with(':')));
    let sent: Vec<u64> = (9..=9 + top).map(|i| alice.send_ok(i, "bob", format!("m{i}").as_bytes()).msg_id).collect();
    let got = collect(&mut bob, sent.len(), WAIT);
    assert!(got.keys().all(|s| *s > top), "new messages above every seq bob has ({top}): {got:?}");
    let mut ids: Vec<u64> = got.values().map(|p| p.0).collect();
    ids.sort();
    assert_eq!(ids, sent, "every message sent after the second flush reaches bob, once: {got:?}");
    n1.assert_no_panic();
    n2.assert_no_panic();
}

/// Logs in, again after a CONNACK 3 (the engine not reachable yet), as a
/// device would after its backoff; any other refusal fails.
fn login_when_served(node: &Server, user: &str, device: &str, last_seq: u64) -> (Client, ConnAck) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut c = node.client();
        let ack = c.connect_frame(&Connect::new(token(user), device, last_seq));
        if ack.status == connack::OK {
            return (c, ack);
        }
        assert!(ack.status == connack::BUSY && std::time::Instant::now() < deadline, "login {user}/{device}: {ack:?}\n{}", node.stderr_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
}
