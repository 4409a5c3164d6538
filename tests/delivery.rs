//! Delivery rules of PROTOCOL.md against the real binary: SEND/PUSH,
//! inboxes without registration, dedup of client_msg_id, cumulative ACK and
//! the inflight window, replay on connect and retention, groups, and volume
//! across users homed on different cores.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;

// ---- rule 4: send ---------------------------------------------------------

#[test]
fn send_to_online_user_is_pushed() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let before = unix_now_ms();
    let ack = alice.send_and_ack(42, "bob", b"hello bob");
    assert_eq!(ack.client_msg_id, 42);
    assert_eq!(ack.status, sendack::STORED, "{ack:?}");
    assert_ne!(ack.msg_id, 0, "msg_id must be assigned");
    assert!(ack.timestamp_ms + 60_000 >= before && ack.timestamp_ms <= unix_now_ms() + 60_000, "SENDACK timestamp_ms {} is not now", ack.timestamp_ms);

    let p = bob.expect_push();
    assert_eq!(p.seq, 1);
    assert_eq!(p.msg_id, ack.msg_id);
    assert_eq!(p.from, "alice");
    assert_eq!(p.flags, 0, "a live message is not a redelivery");
    assert_eq!(p.payload, b"hello bob");
    assert!(p.timestamp_ms + 60_000 >= before && p.timestamp_ms <= unix_now_ms() + 60_000, "PUSH timestamp_ms {} is not now", p.timestamp_ms);
    bob.ack(1);
    // The sender's own inbox is untouched.
    alice.expect_silence(QUIET);
}

#[test]
fn payloads_are_opaque_bytes() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let payloads: Vec<Vec<u8>> = vec![Vec::new(), vec![0], vec![0xff, 0xfe, 0x00, 0x80], binary, "ünïcödé ✓".as_bytes().to_vec(), vec![b'x'; 60_000]];
    let mut ids = HashSet::new();
    for (i, pl) in payloads.iter().enumerate() {
        let a = alice.send_ok(i as u64 + 1, "bob", pl);
        assert!(ids.insert(a.msg_id), "msg_id {} reused", a.msg_id);
    }
    for (i, pl) in payloads.iter().enumerate() {
        let p = bob.expect_push_seq(i as u64 + 1, pl);
        bob.ack(p.seq);
    }
}

#[test]
fn user_ids_are_arbitrary_utf8() {
    let s = Server::default_start();
    let (mut bob, ack) = s.login("bøb ✓", "phone", 0);
    assert_eq!(ack.user_id, "bøb ✓");
    let (mut alice, _) = s.login("älice", "phone", 0);
    alice.send_ok(1, "bøb ✓", b"hi");
    let p = bob.expect_push_seq(1, b"hi");
    assert_eq!(p.from, "älice");
}

#[test]
fn message_to_never_seen_user_waits_in_its_inbox() {
    let s = Server::default_start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let a = alice.send_ok(1, "zed-never-seen", b"welcome");

    let (mut zed, ack) = s.login("zed-never-seen", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 1));
    let p = zed.expect_push_seq(1, b"welcome");
    assert!(p.is_redelivery(), "replay after connect must be flagged: {p:?}");
    assert_eq!(p.msg_id, a.msg_id);
    assert_eq!(p.from, "alice");
}

#[test]
fn sending_to_yourself_uses_your_inbox() {
    let s = Server::default_start();
    let (mut phone, _) = s.login("alice", "phone", 0);
    let (mut laptop, _) = s.login("alice", "laptop", 0);
    let a = phone.send_ok(1, "alice", b"note to self");
    let p = laptop.expect_push_seq(1, b"note to self");
    assert_eq!((p.msg_id, p.from.as_str()), (a.msg_id, "alice"));
    let p = phone.expect_push_seq(1, b"note to self");
    assert_eq!(p.msg_id, a.msg_id);
}

#[test]
fn seqs_are_dense_with_concurrent_senders() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let senders: Vec<_> = ["alice", "carol", "dave", "erin"]
        .into_iter()
        .map(|u| {
            let (mut c, _) = s.login(u, "dev", 0);
            std::thread::spawn(move || {
                for i in 1..=10u64 {
                    c.send_ok(i, "bob", format!("{u}-{i}").as_bytes());
                }
                c
            })
        })
        .collect();
    let _clients: Vec<Client> = senders.into_iter().map(|h| h.join().expect("sender thread")).collect();
    // 40 entries, seq 1..=40 with no gap, and each sender's in its own order.
    let mut next_from: BTreeMap<String, u64> = BTreeMap::new();
    for seq in 1..=40u64 {
        let p = bob.expect_push();
        assert_eq!(p.seq, seq, "{p:?}");
        let expect = next_from.entry(p.from.clone()).or_insert(1);
        assert_eq!(p.payload, format!("{}-{}", p.from, expect).as_bytes(), "{p:?}");
        *expect += 1;
        bob.ack(seq);
    }
    bob.expect_silence(QUIET);
}

// ---- rule 4: dedup --------------------------------------------------------

#[test]
fn repeated_client_msg_id_is_not_delivered_twice() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let first = alice.send_ok(7, "bob", b"once");
    let again = alice.send_and_ack(7, "bob", b"once");
    assert_eq!(again, first, "a repeated SEND gets the original SENDACK");

    let p = bob.expect_push_seq(1, b"once");
    assert_eq!(p.msg_id, first.msg_id);
    bob.ack(1);
    // The next message is seq 2: the repeat took no seq.
    let second = alice.send_ok(8, "bob", b"twice");
    let p = bob.expect_push_seq(2, b"twice");
    assert_eq!(p.msg_id, second.msg_id);
    bob.ack(2);

    // The id is remembered across reconnects of the same device.
    drop(alice);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let after_reconnect = alice.send_and_ack(7, "bob", b"once");
    assert_eq!(after_reconnect, first, "dedup must survive a reconnect");
    let third = alice.send_ok(9, "bob", b"thrice");
    let p = bob.expect_push_seq(3, b"thrice");
    assert_eq!(p.msg_id, third.msg_id);
    bob.ack(3);

    // Dedup is per device: another device may use the same id.
    let (mut tablet, _) = s.login("alice", "tablet", 0);
    let other = tablet.send_ok(7, "bob", b"from the tablet");
    assert_ne!(other.msg_id, first.msg_id, "another device's id 7 is a new message");
    let p = bob.expect_push_seq(4, b"from the tablet");
    assert_eq!(p.msg_id, other.msg_id);
    bob.ack(4);
    bob.expect_silence(QUIET);
}

#[test]
fn dedup_remembers_the_last_1024_ids() {
    let s = Server::default_start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let mut first = Vec::new();
    // Pipelined: 1024 SENDs, then their SENDACKs.
    let mut burst = Vec::new();
    for i in 1..=1024u64 {
        burst.extend(send_to_user(i, "bob", &i.to_be_bytes()).encode());
    }
    alice.send_raw(&burst).unwrap();
    for i in 1..=1024u64 {
        let a = alice.expect_sendack(i);
        assert_eq!(a.status, sendack::STORED, "{a:?}");
        first.push(a);
    }
    // All 1024 are still remembered.
    for i in [1u64, 512, 1024] {
        assert_eq!(alice.send_and_ack(i, "bob", &i.to_be_bytes()), first[i as usize - 1], "id {i} of the last 1024");
    }
    let (mut bob, ack) = s.login("bob", "phone", 1020);
    assert_eq!(ack.head_seq, 1024, "repeats must not be appended");
    for seq in 1021..=1024u64 {
        bob.expect_push_seq(seq, &seq.to_be_bytes());
    }
}

// ---- rule 5: cumulative ack and inflight window ---------------------------

#[test]
fn inflight_window_limits_unacked_pushes() {
    let s = Config::default().inflight_window(4).ack_timeout_ms(60_000).start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let mut ids = Vec::new();
    for i in 1..=10u64 {
        ids.push(alice.send_ok(i, "bob", format!("m{i}").as_bytes()).msg_id);
    }
    let expect_range = |bob: &mut Client, range: std::ops::RangeInclusive<u64>| {
        for seq in range {
            let p = bob.expect_push_seq(seq, format!("m{seq}").as_bytes());
            assert_eq!(p.msg_id, ids[seq as usize - 1]);
            assert!(!p.is_redelivery(), "held back by the window is not a redelivery: {p:?}");
        }
    };
    expect_range(&mut bob, 1..=4);
    bob.expect_silence(QUIET);
    bob.ack(2);
    expect_range(&mut bob, 5..=6);
    bob.expect_silence(QUIET);
    bob.ack(6);
    expect_range(&mut bob, 7..=10);
    bob.expect_silence(QUIET);
    bob.ack(10);
    // The window is free again: a live message flows at once.
    alice.send_ok(11, "bob", b"m11");
    bob.expect_push_seq(11, b"m11");
}

#[test]
fn cumulative_ack_of_a_later_seq_releases_everything_below() {
    let s = Config::default().inflight_window(4).ack_timeout_ms(60_000).start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=8u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    for seq in 1..=4u64 {
        bob.expect_push_seq(seq, format!("m{seq}").as_bytes());
    }
    // One ack for all four, skipping 1..3.
    bob.ack(4);
    for seq in 5..=8u64 {
        bob.expect_push_seq(seq, format!("m{seq}").as_bytes());
    }
    bob.ack(8);
    drop(bob);
    // Reconnecting from 8 replays nothing.
    let (mut bob, ack) = s.login("bob", "phone", 8);
    assert_eq!(ack.head_seq, 8);
    bob.expect_silence(QUIET);
}

#[test]
fn inflight_window_applies_to_replay() {
    let s = Config::default().inflight_window(4).ack_timeout_ms(60_000).start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=10u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!(ack.head_seq, 10);
    for seq in 1..=4u64 {
        assert!(bob.expect_push_seq(seq, format!("m{seq}").as_bytes()).is_redelivery());
    }
    bob.expect_silence(QUIET);
    bob.ack(4);
    for seq in 5..=8u64 {
        bob.expect_push_seq(seq, format!("m{seq}").as_bytes());
    }
    bob.expect_silence(QUIET);
    bob.ack(8);
    for seq in 9..=10u64 {
        bob.expect_push_seq(seq, format!("m{seq}").as_bytes());
    }
}

// ---- rule 3: replay and integrity -----------------------------------------

#[test]
fn offline_messages_are_replayed_in_order_then_live_continues() {
    let s = Server::default_start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let ids: Vec<u64> = (1..=5u64).map(|i| alice.send_ok(i, "bob", format!("m{i}").as_bytes()).msg_id).collect();

    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 5));
    for seq in 1..=5u64 {
        let p = bob.expect_push_seq(seq, format!("m{seq}").as_bytes());
        assert!(p.is_redelivery(), "replayed entry without REDELIVERY: {p:?}");
        assert_eq!(p.msg_id, ids[seq as usize - 1]);
        assert_eq!(p.from, "alice");
    }
    bob.expect_silence(QUIET);
    bob.ack(5);
    drop(bob);

    // Reconnect having seen up to 3: only 4 and 5.
    let (mut bob, ack) = s.login("bob", "phone", 3);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 5));
    for seq in 4..=5u64 {
        assert!(bob.expect_push_seq(seq, format!("m{seq}").as_bytes()).is_redelivery());
    }
    bob.expect_silence(QUIET);
    bob.ack(5);

    // Live messages follow seamlessly.
    let a6 = alice.send_ok(6, "bob", b"m6");
    let p = bob.expect_push_seq(6, b"m6");
    assert_eq!(p.flags, 0, "live after replay: {p:?}");
    assert_eq!(p.msg_id, a6.msg_id);
}

#[test]
fn live_messages_during_replay_follow_in_seq_order() {
    let s = Server::default_start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=30u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!(ack.head_seq, 30);
    // Bob has read nothing yet; new messages arrive while replay is due.
    for i in 31..=40u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    for seq in 1..=40u64 {
        let p = bob.expect_push_seq(seq, format!("m{seq}").as_bytes());
        if seq <= 30 {
            assert!(p.is_redelivery(), "{p:?}");
        }
        bob.ack(seq);
    }
    bob.expect_silence(QUIET);
}

#[test]
fn last_seq_at_head_replays_nothing() {
    let s = Server::default_start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=3u64 {
        alice.send_ok(i, "bob", b"x");
    }
    let (mut bob, ack) = s.login("bob", "phone", 3);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 3));
    bob.expect_silence(QUIET);
    alice.send_ok(4, "bob", b"live");
    let p = bob.expect_push_seq(4, b"live");
    assert_eq!(p.flags, 0);
}

#[test]
fn retention_by_count_moves_oldest_seq() {
    let s = Config::default().inbox_max_messages(3).start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=5u64 {
        alice.send_ok(i, "bob", format!("m{i}").as_bytes());
    }
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (3, 5), "last_seq 0 + 1 < oldest 3: the device can tell it lost 1..2");
    for seq in 3..=5u64 {
        assert!(bob.expect_push_seq(seq, format!("m{seq}").as_bytes()).is_redelivery());
    }
    bob.expect_silence(QUIET);
    bob.ack(5);
    drop(bob);

    let (mut bob, ack) = s.login("bob", "phone", 4);
    assert_eq!((ack.oldest_seq, ack.head_seq), (3, 5));
    bob.expect_push_seq(5, b"m5");
    bob.expect_silence(QUIET);
    bob.ack(5);

    // Live traffic keeps trimming: seqs stay dense and never reused.
    alice.send_ok(6, "bob", b"m6");
    bob.expect_push_seq(6, b"m6");
    bob.ack(6);
    drop(bob);
    let (_bob, ack) = s.login("bob", "phone", 6);
    assert_eq!((ack.oldest_seq, ack.head_seq), (4, 6));
}

#[test]
fn retention_by_age_drops_old_entries() {
    let s = Config::default().inbox_max_age_s(2).start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_ok(1, "bob", b"old-1");
    alice.send_ok(2, "bob", b"old-2");
    // Well past the 2 s age limit (this is the rule under test, not speed).
    std::thread::sleep(Duration::from_millis(5000));
    alice.send_ok(3, "bob", b"fresh");
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (3, 3), "entries older than inbox_max_age_s are dropped");
    let p = bob.expect_push_seq(3, b"fresh");
    assert!(p.is_redelivery());
    bob.expect_silence(QUIET);
}

// ---- groups ---------------------------------------------------------------

#[test]
fn group_message_fans_out_to_members_but_not_sender() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_frame(&send_to_group(1, "team", b"hi team"));
    let a = alice.expect_sendack(1);
    assert_eq!(a.status, sendack::STORED, "{a:?}");
    assert_ne!(a.msg_id, 0);

    let p = bob.expect_push_seq(1, b"hi team");
    assert_eq!((p.from.as_str(), p.msg_id, p.flags), ("alice", a.msg_id, 0));
    bob.ack(1);

    // Carol was offline: it is in her inbox.
    let (mut carol, ack) = s.login("carol", "phone", 0);
    assert_eq!(ack.head_seq, 1);
    let p = carol.expect_push_seq(1, b"hi team");
    assert_eq!((p.from.as_str(), p.msg_id), ("alice", a.msg_id));
    assert!(p.is_redelivery());
    carol.ack(1);

    // The sender's own inbox was not written.
    alice.expect_silence(QUIET);
    let (_alice2, ack) = s.login("alice", "laptop", 0);
    assert_eq!(ack.head_seq, 0, "group sender's inbox must not be written");

    // A member's reply reaches the others, including alice.
    carol.send_frame(&send_to_group(1, "team", b"hi alice"));
    assert_eq!(carol.expect_sendack(1).status, sendack::STORED);
    let p = alice.expect_push_seq(1, b"hi alice");
    assert_eq!(p.from, "carol");
    let p = bob.expect_push_seq(2, b"hi alice");
    assert_eq!(p.from, "carol");
    carol.expect_silence(QUIET);
}

#[test]
fn unknown_group_is_no_such_target() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_frame(&send_to_group(1, "no-such-group", b"hello?"));
    let a = alice.expect_sendack(1);
    assert_eq!(a.status, sendack::NO_SUCH_TARGET, "{a:?}");
    // A group name is not a user name either.
    alice.send_frame(&send_to_group(2, "bob", b"hello?"));
    assert_eq!(alice.expect_sendack(2).status, sendack::NO_SUCH_TARGET);
    bob.expect_silence(QUIET);
    // The session goes on.
    alice.send_ok(3, "bob", b"direct");
    bob.expect_push_seq(1, b"direct");
}

#[test]
fn non_member_may_not_send_to_group() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut mallory, _) = s.login("mallory", "phone", 0);
    mallory.send_frame(&send_to_group(1, "team", b"let me in"));
    let a = mallory.expect_sendack(1);
    assert_eq!(a.status, sendack::FORBIDDEN, "{a:?}");
    bob.expect_silence(QUIET);
    let (_carol, ack) = s.login("carol", "phone", 0);
    assert_eq!(ack.head_seq, 0, "a forbidden group send must not be stored");
    // Mallory can still message bob directly.
    mallory.send_ok(2, "bob", b"direct");
    bob.expect_push_seq(1, b"direct");
}

#[test]
fn group_fanout_across_many_members() {
    let members: Vec<String> = (0..16).map(|i| format!("member{i}")).collect();
    let refs: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
    let s = Config::default().group("big", &refs).start();
    let mut clients: Vec<Client> = members.iter().map(|m| s.login(m, "dev", 0).0).collect();
    let mut sender = clients.remove(0);
    let mut acks = Vec::new();
    for i in 1..=5u64 {
        sender.send_frame(&send_to_group(i, "big", format!("g{i}").as_bytes()));
        let a = sender.expect_sendack(i);
        assert_eq!(a.status, sendack::STORED, "{a:?}");
        acks.push(a);
    }
    for c in clients.iter_mut() {
        for i in 1..=5u64 {
            let p = c.expect_push_seq(i, format!("g{i}").as_bytes());
            assert_eq!((p.from.as_str(), p.msg_id), ("member0", acks[i as usize - 1].msg_id));
        }
        c.ack(5);
    }
    sender.expect_silence(QUIET);
}

// ---- volume and cores ------------------------------------------------------

#[test]
fn five_hundred_messages_in_order_exactly_once() {
    const N: u64 = 500;
    let s = Config::default().ack_timeout_ms(60_000).start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);

    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        for seq in 1..=N {
            let p = bob.expect_push();
            assert_eq!(p.seq, seq, "pushes must be dense and in order: {p:?}");
            bob.ack(p.seq);
            got.push(p);
        }
        bob.expect_silence(QUIET);
        got
    });

    let mut burst = Vec::new();
    for i in 1..=N {
        burst.extend(send_to_user(i, "bob", format!("message {i}").as_bytes()).encode());
    }
    alice.send_raw(&burst).unwrap();
    let mut acks = BTreeMap::new();
    while acks.len() < N as usize {
        match alice.expect_frame(WAIT, "SENDACK") {
            Frame::SendAck(a) => {
                assert_eq!(a.status, sendack::STORED, "{a:?}");
                assert!(acks.insert(a.client_msg_id, a).is_none(), "two SENDACKs for {}", a.client_msg_id);
            }
            other => alice.fail(format!("expected SENDACK, got {other:?}")),
        }
    }
    let got = receiver.join().expect("receiver thread");
    let mut ids = HashSet::new();
    for (i, p) in got.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(p.payload, format!("message {n}").as_bytes(), "{p:?}");
        assert_eq!(p.msg_id, acks[&n].msg_id, "PUSH {n} msg_id differs from its SENDACK");
        assert!(ids.insert(p.msg_id));
        assert!(!p.is_redelivery(), "prompt acks need no redelivery: {p:?}");
    }
}

#[test]
fn twenty_users_in_a_ring_across_cores() {
    const USERS: usize = 20;
    const PER: u64 = 10;
    let s = Config::default().ack_timeout_ms(60_000).start();
    let barrier = Arc::new(Barrier::new(USERS));
    let addr_clients: Vec<Client> = (0..USERS).map(|i| s.login(&format!("ring{i}"), "dev", 0).0).collect();
    let handles: Vec<_> = addr_clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let next = format!("ring{}", (i + 1) % USERS);
                let prev = format!("ring{}", (i + USERS - 1) % USERS);
                barrier.wait();
                let mut burst = Vec::new();
                for k in 1..=PER {
                    burst.extend(send_to_user(k, &next, format!("{i}:{k}").as_bytes()).encode());
                }
                c.send_raw(&burst).unwrap();
                let mut acked = HashSet::new();
                let mut pushed = 0u64;
                while acked.len() < PER as usize || pushed < PER {
                    match c.expect_frame(WAIT, "SENDACK or PUSH") {
                        Frame::SendAck(a) => {
                            assert_eq!(a.status, sendack::STORED, "ring{i}: {a:?}");
                            assert!(acked.insert(a.client_msg_id), "ring{i}: duplicate {a:?}");
                        }
                        Frame::Push(p) => {
                            pushed += 1;
                            assert_eq!(p.seq, pushed, "ring{i}: {p:?}");
                            assert_eq!(p.from, prev, "ring{i}: {p:?}");
                            let from_idx = (i + USERS - 1) % USERS;
                            assert_eq!(p.payload, format!("{from_idx}:{pushed}").as_bytes(), "ring{i}: {p:?}");
                            c.ack(p.seq);
                        }
                        other => c.fail(format!("ring{i}: unexpected {other:?}")),
                    }
                }
                c
            })
        })
        .collect();
    for h in handles {
        h.join().expect("ring member thread");
    }
}
