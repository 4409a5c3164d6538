//! Fleet mode on a Redis Cluster (FLEET.md: "Redis Cluster"): three
//! masters started here on free ports in temp dirs, real ringgate nodes
//! over them — the scripts on the shard of each user's slot, dedup and
//! replay through the cluster, and the notification subscriber moving when
//! the shard it listens on dies (to another seed URL, or to a node the
//! cluster lists when the only seed is gone). Split from `fleet.rs` (one
//! engine) so that neither file holds two concerns.
//!
//! Needs `redis-server` and `redis-cli` on PATH, as `fleet.rs`.

mod common;
#[path = "common/fleet.rs"]
mod fleet_common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use fleet_common::*;

#[test]
fn redis_cluster_of_three_masters() {
    let Some(bin) = redis_or_skip("redis_cluster_of_three_masters") else { return };
    let shards = start_cluster(&bin);
    let urls: Vec<String> = shards.iter().map(|r| r.url()).collect();
    let key_dir = tempfile::tempdir().unwrap();
    let key = shared_key(key_dir.path());
    let n1 = node_config(&urls, "n1", &key, "").start();
    let n2 = node_config(&urls, "n2", &key, "").start();
    wait_ready(&n1, true);
    wait_ready(&n2, true);
    // Users spread over the three shards' slots.
    let users: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let mut conns: Vec<Client> = users.iter().map(|u| n2.login(u, "d1", 0).0).collect();
    let (mut alice, _) = n1.login("alice", "a1", 0);
    let mut id = 0;
    for u in &users {
        for _ in 0..3 {
            id += 1;
            alice.send_ok(id, u, b"c");
        }
    }
    for (u, c) in users.iter().zip(conns.iter_mut()) {
        let got = collect(c, 3, WAIT);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "{u} on n2");
    }
    // Dedup and replay through the cluster from the other node.
    let first = alice.send_ok(1000, "user0", b"once");
    let (mut alice2, _) = n2.login("alice", "a1", 0);
    assert_eq!(alice2.send_ok(1000, "user0", b"once").msg_id, first.msg_id);
    let (mut late, ack) = n1.login("user0", "d2", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 4));
    assert_eq!(collect(&mut late, 4, WAIT).len(), 4);
    n1.assert_no_panic();
    n2.assert_no_panic();
}

/// The shard of a 3-master cluster that holds `key`.
fn owner(shards: &[Redis], key: &str) -> usize {
    shards.iter().position(|r| r.cmd(&["GET", key]).is_some_and(|l| !l.starts_with("-MOVED"))).expect("a shard owns every key")
}

#[test]
fn subscriber_moves_to_another_seed_when_its_shard_dies() {
    let Some(bin) = redis_or_skip("subscriber_moves_to_another_seed_when_its_shard_dies") else { return };
    let mut shards = start_cluster(&bin);
    // The shard to kill holds none of the keys this test needs (the
    // nodes' heartbeats, the intents, both users): only the subscribers
    // are on it, as the first seed URL.
    let keep: HashSet<usize> = ["rg:{nodes}:z", "rg:{intents}:z"].iter().map(|k| owner(&shards, k)).collect();
    let victim = (0..3).find(|i| !keep.contains(i)).expect("three shards, two keys");
    let users: Vec<String> = (0..50).map(|i| format!("u{i}")).filter(|u| owner(&shards, &format!("rg:{{{u}}}:h")) != victim).take(2).collect();
    let mut urls: Vec<String> = vec![shards[victim].url()];
    urls.extend((0..3).filter(|i| *i != victim).map(|i| shards[i].url()));
    let mut p = Pair::start(&urls, &users);

    // The first seed's shard dies. Until the subscribers move, only the
    // heartbeat's gap repair delivers across nodes; once they have moved,
    // notifications do again: several messages in a row arrive with no
    // repair counted.
    shards[victim].kill9();
    let a2 = admin(&p.n2).0;
    let took = p.until_live(a2);
    eprintln!("subscriber: live delivery again {took:?} after the first seed's shard died");
    assert!(p.n2.stderr_tail().contains("fleet subscriber: subscribed"), "{}", p.n2.stderr_tail());
    p.n1.assert_no_panic();
    p.n2.assert_no_panic();
}

/// `PUBSUB NUMSUB channel` on one shard: its own subscribers of `channel`.
fn numsub(r: &Redis, channel: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", r.port)) else { return 0 };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let req = format!("*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{channel}\r\n", channel.len());
    s.write_all(req.as_bytes()).unwrap();
    // `*2 $len channel :count`: read until the count's line is in.
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(n) = text.split_inclusive("\r\n").filter_map(|l| l.strip_suffix("\r\n")).find_map(|l| l.strip_prefix(':')).and_then(|n| n.parse().ok()) {
            return n;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The one seed node of a Cluster dies: the engine connection goes on
/// with the nodes it learned from the slot map, and so must the
/// subscriber (FLEET.md points 2 and 9; `pubsub::subscriber`).
#[test]
fn subscriber_follows_the_cluster_when_its_only_seed_dies() {
    let Some(bin) = redis_or_skip("subscriber_follows_the_cluster_when_its_only_seed_dies") else { return };
    let mut shards = start_cluster(&bin);
    // As above: the shard to kill holds none of the keys this test needs.
    let keep: HashSet<usize> = ["rg:{nodes}:z", "rg:{intents}:z"].iter().map(|k| owner(&shards, k)).collect();
    let victim = (0..3).find(|i| !keep.contains(i)).expect("three shards, two keys");
    let users: Vec<String> = (0..50).map(|i| format!("u{i}")).filter(|u| owner(&shards, &format!("rg:{{{u}}}:h")) != victim).take(2).collect();
    // The data connection sends the kick's PUBLISH to the shard of its
    // channel's slot (docs/fleet.md, "Not done yet"): not the victim.
    assert_ne!(owner(&shards, "rg:n"), victim);
    // One seed node and no other: one URL is a single engine (FLEET.md
    // "Configuration"), so the victim's URL is given twice, which makes a
    // Cluster seed list that names one node. The other shards are known
    // only from the cluster itself.
    let urls: Vec<String> = vec![shards[victim].url(); 2];
    let mut p = Pair::start(&urls, &users);
    // Both subscribers start on the seed.
    for node in ["n1", "n2"] {
        assert_eq!(numsub(&shards[victim], &format!("rg:n:{node}")), 1, "{node} subscribed on the seed");
    }

    // The only seed's shard dies. Every SEND below is confirmed (the
    // engine's cluster connection lives on the other shards); delivery
    // across nodes is live again once the subscribers found another node
    // of the cluster: several messages in a row with no repair counted.
    let ((a1, tok1), (a2, _)) = (admin(&p.n1), admin(&p.n2));
    shards[victim].kill9();
    let took = p.until_live(a2);
    eprintln!("subscriber: live delivery again {took:?} after the only seed's shard died");
    // Both subscribers are on a surviving shard (the kick's answer comes
    // back to n1's), as the shards themselves count them: the nodes'
    // logs fill with the redis crate's reconnect warnings meanwhile.
    for node in ["n1", "n2"] {
        let deadline = Instant::now() + WAIT;
        while (0..3).filter(|i| *i != victim).map(|i| numsub(&shards[i], &format!("rg:n:{node}"))).sum::<u64>() != 1 {
            assert!(Instant::now() < deadline, "{node}: no subscription on a surviving shard");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A fleet-wide kick rides on rg:n: asked on n1, it closes the
    // recipient's connection on n2.
    let (st, body) = http(a1, "DELETE", &format!("/v1/users/{}/connections", users[0]), Some(&tok1), None);
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["closed"], 1, "the connection on n2: {body}");
    let deadline = Instant::now() + WAIT;
    loop {
        match p.rx.recv_frame(deadline.saturating_duration_since(Instant::now())) {
            Ok(Frame::Disconnect { reason, message }) => {
                assert_eq!((reason, message.as_str()), (0, "closed by operator"));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e} before DISCONNECT 0"),
        }
    }
    p.n1.assert_no_panic();
    p.n2.assert_no_panic();
}

/// Two nodes over `urls`: `users[0]` listening on n2, `users[1]` sending
/// on n1, one message across already delivered.
struct Pair {
    n1: Server,
    n2: Server,
    rx: Client,
    tx: Client,
    to: String,
    id: u64,
    _key_dir: tempfile::TempDir,
}

impl Pair {
    fn start(urls: &[String], users: &[String]) -> Pair {
        let key_dir = tempfile::tempdir().unwrap();
        let key = shared_key(key_dir.path());
        let n1 = node_config(urls, "n1", &key, "").start();
        let n2 = node_config(urls, "n2", &key, "").start();
        wait_ready(&n1, true);
        wait_ready(&n2, true);
        let (rx, _) = n2.login(&users[0], "d1", 0);
        let (tx, _) = n1.login(&users[1], "d1", 0);
        let mut p = Pair { n1, n2, rx, tx, to: users[0].clone(), id: 0, _key_dir: key_dir };
        p.deliver();
        p
    }

    /// One message across, delivered (live or repaired).
    fn deliver(&mut self) {
        self.id += 1;
        self.tx.send_ok(self.id, &self.to, b"x");
        assert_eq!(collect(&mut self.rx, 1, WAIT).len(), 1, "delivered (live or repaired)");
    }

    /// Sends until several messages in a row arrive with no gap repair
    /// counted on n2 (admin address `a2`): its subscriber listens again.
    /// Returns how long that took.
    fn until_live(&mut self, a2: std::net::SocketAddr) -> Duration {
        let t0 = Instant::now();
        let mut clean = 0;
        while clean < 5 {
            assert!(t0.elapsed() < WAIT, "cross-node delivery still needs gap repair: the subscriber never left the dead seed\n{}", self.n2.stderr_tail());
            let before = metric_at(a2, "ringgate_fleet_gap_repairs_total");
            self.deliver();
            clean = if metric_at(a2, "ringgate_fleet_gap_repairs_total") == before { clean + 1 } else { 0 };
        }
        t0.elapsed()
    }
}
