//! Session rules of PROTOCOL.md against the real binary: connect and
//! CONNACK, token and CONNECT validation, heartbeat and idle close,
//! retransmission and ack timeout, replacement, client DISCONNECT and
//! shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;

// ---- rule 1: connect ------------------------------------------------------

#[test]
fn connack_reports_user_limits_and_empty_inbox() {
    let s = Server::default_start();
    let before = unix_now_ms();
    let (_c, ack) = s.login("alice", "phone", 0);
    let after = unix_now_ms();
    assert_eq!(ack.status, connack::OK);
    assert_eq!(ack.user_id, "alice", "user_id must be the token's sub");
    assert_eq!(ack.heartbeat_s, 30, "no keepalive preference: the configured heartbeat");
    assert_eq!(ack.max_frame, 65_536);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 0), "a new user sees head 0, oldest 1");
    assert!(
        ack.server_time_ms + 60_000 >= before && ack.server_time_ms <= after + 60_000,
        "server_time_ms {} is not close to now ({before}..{after})",
        ack.server_time_ms
    );
}

#[test]
fn connack_advertises_configured_max_frame() {
    let s = Config::default().max_frame(4096).start();
    let (_c, ack) = s.login("alice", "phone", 0);
    assert_eq!(ack.max_frame, 4096);
}

#[test]
fn keepalive_negotiation() {
    let s = Server::default_start();
    // (device asks, server enforces): the device's value when non-zero and
    // below the configured 30 s, otherwise the configured value.
    for (i, (asked, enforced)) in [(10u16, 10u16), (1, 1), (29, 29), (0, 30), (30, 30), (60, 30), (u16::MAX, 30)].into_iter().enumerate() {
        let mut c = s.client();
        let mut connect = Connect::new(token("alice"), format!("dev{i}"), 0);
        connect.keepalive_s = asked;
        let ack = c.connect_frame(&connect);
        assert_eq!(ack.status, connack::OK, "keepalive_s {asked}");
        assert_eq!(ack.heartbeat_s, enforced, "keepalive_s {asked} in CONNECT");
    }
}

#[test]
fn first_frame_not_connect_is_protocol_error() {
    let s = Server::default_start();
    let mut c = s.client();
    c.send_frame(&Frame::Ping { nonce: 7 });
    c.expect_disconnect(reason::PROTOCOL_ERROR);

    // A SEND before CONNECT is no better.
    let mut c = s.client();
    c.send_msg(1, "bob", b"sneaky");
    c.expect_disconnect(reason::PROTOCOL_ERROR);

    // Neither is a PUSHACK.
    let mut c = s.client();
    c.ack(1);
    c.expect_disconnect(reason::PROTOCOL_ERROR);

    // The server still accepts proper sessions.
    let (mut ok, _) = s.login("alice", "phone", 0);
    ok.ping_pong(1);
}

#[test]
fn unsupported_version_gets_connack_1_and_close() {
    let s = Server::default_start();
    for version in [0u8, 2, 255] {
        let mut c = s.client();
        let mut connect = Connect::new(token("alice"), "phone", 0);
        connect.version = version;
        let ack = c.connect_frame(&connect);
        assert_eq!(ack.status, connack::UNSUPPORTED_VERSION, "version {version}: {ack:?}");
        c.expect_closed();
    }
}

fn assert_rejected(s: &Server, tok: String, what: &str) {
    let mut c = s.client();
    let ack = c.connect_frame(&Connect::new(tok, "phone", 0));
    assert_eq!(ack.status, connack::BAD_TOKEN, "{what}: {ack:?}");
    c.expect_closed();
}

#[test]
fn bad_tokens_get_connack_2_and_close() {
    let s = Server::default_start();
    assert_rejected(&s, "garbage".into(), "garbage token");
    assert_rejected(&s, String::new(), "empty token");
    assert_rejected(&s, "a.b.c".into(), "three junk segments");
    assert_rejected(&s, token_with("alice", "some-other-secret-0123456789", 3600), "wrong secret");
    assert_rejected(&s, token_alg_none("alice"), "alg none");
    // A valid token with one signature byte flipped.
    let good = token("alice");
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert_rejected(&s, String::from_utf8(tampered).unwrap(), "tampered signature");
    // Claims swapped for another user's, signature kept.
    let mallory = token("mallory");
    let mut parts: Vec<&str> = good.split('.').collect();
    let mallory_claims = mallory.split('.').nth(1).unwrap();
    parts[1] = mallory_claims;
    assert_rejected(&s, parts.join("."), "claims swapped under the signature");
    // The genuine token still works.
    let (_c, ack) = s.login("alice", "phone", 0);
    assert_eq!(ack.user_id, "alice");
}

#[test]
fn expired_token_gets_connack_2() {
    let s = Server::default_start();
    assert_rejected(&s, token_with("alice", SECRET, -3600), "expired an hour ago");
}

#[test]
fn oversized_token_is_refused() {
    // The token field is at most 4096 bytes; a longer one is a malformed
    // CONNECT (or at least not a good token).
    let s = Server::default_start();
    let mut c = s.client();
    let ack = c.connect_frame(&Connect::new("x".repeat(5000), "phone", 0));
    assert!(ack.status == connack::MALFORMED || ack.status == connack::BAD_TOKEN, "5000-byte token: {ack:?}");
    c.expect_closed();
}

#[test]
fn device_id_length_is_checked() {
    let s = Server::default_start();
    for bad in [String::new(), "d".repeat(65), "é".repeat(33)] {
        let mut c = s.client();
        let ack = c.connect_frame(&Connect::new(token("alice"), bad.clone(), 0));
        assert_eq!(ack.status, connack::MALFORMED, "device_id of {} bytes: {ack:?}", bad.len());
        c.expect_closed();
    }
    // 1 and 64 bytes are fine.
    for good in ["d".to_string(), "d".repeat(64)] {
        let mut c = s.client();
        let ack = c.connect_frame(&Connect::new(token("alice"), good.clone(), 0));
        assert_eq!(ack.status, connack::OK, "device_id of {} bytes: {ack:?}", good.len());
    }
}

// ---- rule 7: heartbeat ----------------------------------------------------

#[test]
fn ping_is_answered_with_pong() {
    let s = Server::default_start();
    let (mut c, _) = s.login("alice", "phone", 0);
    c.ping_pong(0xDEAD_BEEF_1234_5678);
    c.ping_pong(0);
    c.ping_pong(u64::MAX);
}

#[test]
fn idle_connection_is_closed_with_reason_5() {
    let s = Server::default_start();
    let mut c = s.client();
    // Idle means the device sent nothing; do not even answer server PINGs.
    c.auto_pong = false;
    let mut connect = Connect::new(token("alice"), "phone", 0);
    connect.keepalive_s = 1;
    let start = Instant::now();
    let ack = c.connect_frame(&connect);
    assert_eq!(ack.heartbeat_s, 1);
    let deadline = start + Duration::from_secs(10);
    loop {
        match c.recv_frame(deadline.saturating_duration_since(Instant::now())) {
            Ok(Frame::Ping { .. }) => continue,
            Ok(Frame::Disconnect { reason, .. }) => {
                assert_eq!(reason, reason::IDLE_TIMEOUT);
                break;
            }
            other => c.fail(format!("expected DISCONNECT(5) within 10 s of idling, got {other:?}")),
        }
    }
    // 2.5 × 1 s; allow for a coarse timer, but not an instant close.
    assert!(start.elapsed() >= Duration::from_millis(1500), "closed as idle after only {:?}", start.elapsed());
    c.expect_closed();
}

#[test]
fn pinging_client_stays_connected() {
    let s = Server::default_start();
    let mut c = s.client();
    let mut connect = Connect::new(token("alice"), "phone", 0);
    connect.keepalive_s = 1;
    assert_eq!(c.connect_frame(&connect).heartbeat_s, 1);
    let start = Instant::now();
    let mut nonce = 0;
    while start.elapsed() < Duration::from_secs(4) {
        nonce += 1;
        c.ping_pong(nonce);
        std::thread::sleep(Duration::from_millis(500));
    }
    c.ping_pong(u64::MAX);
}

#[test]
fn any_frame_counts_as_activity() {
    // PUSHACKs keep a connection alive as well as PINGs do.
    let s = Server::default_start();
    let mut c = s.client();
    let mut connect = Connect::new(token("alice"), "phone", 0);
    connect.keepalive_s = 1;
    assert_eq!(c.connect_frame(&connect).heartbeat_s, 1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        c.ack(0);
        match c.recv_frame(Duration::from_millis(500)) {
            Err(RecvError::Timeout) => {}
            other => c.fail(format!("PUSHACK(0) every 500 ms: expected silence, got {other:?}")),
        }
    }
    c.ping_pong(3);
}

// ---- rule 6: retransmission -----------------------------------------------

#[test]
fn unacked_push_is_retransmitted_then_ack_timeout() {
    let s = Config::default().ack_timeout_ms(300).max_retries(2).start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let sent = alice.send_ok(1, "bob", b"ack me");

    let first = bob.expect_push_seq(1, b"ack me");
    assert_eq!(first.msg_id, sent.msg_id);
    assert!(!first.is_redelivery(), "first transmission flagged REDELIVERY: {first:?}");
    for round in 1..=2 {
        let p = bob.expect_push();
        assert_eq!((p.seq, p.msg_id, p.payload.as_slice()), (1, sent.msg_id, &b"ack me"[..]), "retransmission {round}");
        assert!(p.is_redelivery(), "retransmission {round} lacks REDELIVERY: {p:?}");
    }
    bob.expect_disconnect(reason::ACK_TIMEOUT);

    // The message stayed in the inbox: replayed on reconnect.
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 1));
    let p = bob.expect_push_seq(1, b"ack me");
    assert!(p.is_redelivery());
    assert_eq!(p.msg_id, sent.msg_id);
    bob.ack(1);
    bob.ping_pong(1);

    // Acknowledged now: a later session gets nothing.
    drop(bob);
    let (mut bob, ack) = s.login("bob", "phone", 1);
    assert_eq!(ack.head_seq, 1);
    bob.expect_silence(QUIET);
}

#[test]
fn retransmission_resends_everything_unacked_and_stops_on_ack() {
    let s = Config::default().ack_timeout_ms(300).max_retries(2).start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    // One write, so that the three are pushed well within one ack timeout.
    let mut burst = Vec::new();
    for i in 1..=3u64 {
        burst.extend(send_to_user(i, "bob", format!("m{i}").as_bytes()).encode());
    }
    alice.send_raw(&burst).unwrap();
    for i in 1..=3u64 {
        let a = alice.expect_sendack(i);
        assert_eq!(a.status, sendack::STORED, "{a:?}");
    }
    for i in 1..=3u64 {
        let p = bob.expect_push_seq(i, format!("m{i}").as_bytes());
        assert!(!p.is_redelivery());
    }
    // First retransmission: everything unacked, in order, flagged.
    for i in 1..=3u64 {
        let p = bob.expect_push_seq(i, format!("m{i}").as_bytes());
        assert!(p.is_redelivery(), "{p:?}");
    }
    bob.ack(3);
    // A second round may already be on its way; after that, silence (no
    // more retransmissions, no DISCONNECT(4)).
    let quiet_until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = quiet_until.saturating_duration_since(Instant::now());
        match bob.recv_frame(left) {
            Err(RecvError::Timeout) => break,
            Ok(Frame::Push(p)) if p.seq <= 3 && p.is_redelivery() => continue,
            other => bob.fail(format!("after PUSHACK(3): expected silence, got {other:?}")),
        }
    }
    bob.ping_pong(9);
    // Live traffic goes on.
    alice.send_ok(4, "bob", b"m4");
    let p = bob.expect_push_seq(4, b"m4");
    assert!(!p.is_redelivery());
}

// ---- rule 8: replacement --------------------------------------------------

#[test]
fn same_device_reconnect_replaces_older_connection() {
    let s = Server::default_start();
    let (mut old, _) = s.login("bob", "phone", 0);
    let (mut new, _) = s.login("bob", "phone", 0);
    old.expect_disconnect(reason::REPLACED);

    let (mut alice, _) = s.login("alice", "phone", 0);
    let sent = alice.send_ok(1, "bob", b"to the new one");
    let p = new.expect_push_seq(1, b"to the new one");
    assert_eq!(p.msg_id, sent.msg_id);
    new.ack(1);
    new.ping_pong(5);
}

#[test]
fn replacement_works_across_many_users() {
    // Users are homed on cores by hash; many ids make sure some replacements
    // land on the core that does not own the user.
    let s = Server::default_start();
    for i in 0..12 {
        let user = format!("user{i}");
        let (mut old, _) = s.login(&user, "dev", 0);
        let (mut new, _) = s.login(&user, "dev", 0);
        old.expect_disconnect(reason::REPLACED);
        new.ping_pong(i);
    }
}

#[test]
fn different_devices_each_get_every_message() {
    let s = Server::default_start();
    let (mut phone, _) = s.login("bob", "phone", 0);
    let (mut laptop, _) = s.login("bob", "laptop", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let mut ids = Vec::new();
    for i in 1..=3u64 {
        ids.push(alice.send_ok(i, "bob", format!("m{i}").as_bytes()).msg_id);
    }
    for dev in [&mut phone, &mut laptop] {
        for i in 1..=3u64 {
            let p = dev.expect_push_seq(i, format!("m{i}").as_bytes());
            assert_eq!(p.msg_id, ids[i as usize - 1]);
            assert_eq!(p.from, "alice");
        }
    }
    // Each device has its own cursor: the phone acks everything, the laptop
    // acks 1 and comes back from 1.
    phone.ack(3);
    laptop.ack(1);
    drop(laptop);
    let (mut laptop, ack) = s.login("bob", "laptop", 1);
    assert_eq!(ack.head_seq, 3);
    laptop.expect_push_seq(2, b"m2");
    laptop.expect_push_seq(3, b"m3");
    laptop.ack(3);
    // Both still online and both get the next one.
    alice.send_ok(4, "bob", b"m4");
    phone.expect_push_seq(4, b"m4");
    laptop.expect_push_seq(4, b"m4");
}

// ---- client DISCONNECT and shutdown (rule 9) -------------------------------

#[test]
fn client_disconnect_closes_connection() {
    let s = Server::default_start();
    let (mut c, _) = s.login("alice", "phone", 0);
    c.send_frame(&Frame::Disconnect { reason: reason::NORMAL, message: "bye".into() });
    // The server may answer with its own DISCONNECT before closing.
    match c.recv_frame(WAIT) {
        Err(RecvError::Closed) => {}
        Ok(Frame::Disconnect { .. }) => c.expect_closed(),
        other => c.fail(format!("after client DISCONNECT: expected close, got {other:?}")),
    }
    let (mut again, _) = s.login("alice", "phone", 0);
    again.ping_pong(1);
}

#[test]
fn sigterm_disconnects_everyone_with_reason_7_and_exits() {
    let mut s = Server::default_start();
    let mut clients: Vec<Client> = (0..6).map(|i| s.login(&format!("user{i}"), "dev", 0).0).collect();
    for c in clients.iter_mut() {
        c.ping_pong(1);
    }
    s.sigterm();
    for c in clients.iter_mut() {
        c.expect_disconnect(reason::SHUTDOWN);
    }
    let status = s.wait_exit(WAIT).unwrap_or_else(|| panic!("server still running 10 s after SIGTERM\nstderr:\n{}", s.stderr_tail()));
    assert!(status.success(), "exit status after SIGTERM: {status}\nstderr:\n{}", s.stderr_tail());
}
