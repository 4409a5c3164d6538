//! Frame-level protocol errors after a successful CONNECT: each one gets
//! DISCONNECT (1 protocol error, 2 frame too large) and a close, never a
//! panic, and never disturbs other connections.

mod common;

use std::time::Duration;

use common::*;

/// Runs each `(name, bytes, reason)` case on its own fresh connection of
/// "mallory" on one server, and after each checks that the server lives
/// and that carol still gets dave's messages.
fn run_cases(cfg: Config, cases: &[(&str, Vec<u8>, u8)]) {
    let mut s = cfg.start();
    let (mut carol, _) = s.login("carol", "phone", 0);
    let (mut dave, _) = s.login("dave", "phone", 0);
    for (i, (name, bytes, reason)) in cases.iter().enumerate() {
        let (mut m, _) = s.login("mallory", "phone", 0);
        m.ping_pong(1);
        m.send_raw(bytes).unwrap_or_else(|e| panic!("{name}: write failed: {e}"));
        match m.recv_frame(WAIT) {
            Ok(Frame::Disconnect { reason: r, .. }) if r == *reason => {}
            other => m.fail(format!("{name}: expected DISCONNECT({reason}), got {other:?}")),
        }
        match m.recv_frame(WAIT) {
            Err(RecvError::Closed) => {}
            other => m.fail(format!("{name}: expected close after DISCONNECT, got {other:?}")),
        }
        s.assert_alive();
        s.assert_no_panic();
        let seq = i as u64 + 1;
        let payload = format!("after {name}");
        dave.send_ok(seq, "carol", payload.as_bytes());
        carol.expect_push_seq(seq, payload.as_bytes());
        carol.ack(seq);
    }
    // New sessions still work.
    let (mut m, _) = s.login("mallory", "phone", 0);
    m.ping_pong(2);
}

fn send_body(kind: u8, target: &[u8], payload: &[u8]) -> Enc {
    Enc::new().u64(1).u8(kind).str_bytes(target).bytes(payload)
}

#[test]
fn zero_length_frame() {
    run_cases(Config::default(), &[("length 0", vec![0, 0, 0, 0], reason::PROTOCOL_ERROR)]);
}

#[test]
fn frame_longer_than_max_frame() {
    // The header alone says it is too long; the server must not wait for
    // (or allocate) the body.
    let mut over = 1025u32.to_be_bytes().to_vec();
    over.push(ty::SEND);
    over.extend_from_slice(&[0u8; 16]);
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.push(ty::SEND);
    run_cases(
        Config::default().max_frame(1024),
        &[("length max_frame + 1", over, reason::FRAME_TOO_LARGE), ("length u32::MAX", huge, reason::FRAME_TOO_LARGE)],
    );
}

#[test]
fn frame_of_exactly_max_frame_is_not_a_protocol_error() {
    let s = Config::default().max_frame(1024).start();
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!(ack.max_frame, 1024);
    let (mut alice, _) = s.login("alice", "phone", 0);

    // A SEND whose PUSH also fits: PUSH length = type 1 + seq 8 + msg_id 8
    // + timestamp 8 + from 2+5 ("alice") + flags 1 + payload = 33 + payload.
    let fits = vec![b'f'; 1024 - 33];
    alice.send_ok(1, "bob", &fits);
    bob.expect_push_seq(1, &fits);
    bob.ack(1);

    // A SEND of exactly max_frame: SEND length = type 1 + cmid 8 + kind 1
    // + target 2+3 ("bob") + payload. Within the frame limit, so no
    // DISCONNECT; the server may store it, or refuse the payload with
    // SENDACK 4 because its PUSH would not fit.
    let payload = vec![b'p'; 1024 - 15];
    let frame = send_to_user(2, "bob", &payload).encode();
    assert_eq!(frame.len(), 4 + 1024);
    alice.send_raw(&frame).unwrap();
    let a = alice.expect_sendack(2);
    match a.status {
        sendack::STORED => {
            bob.expect_push_seq(2, &payload);
        }
        sendack::PAYLOAD_TOO_LARGE => bob.expect_silence(QUIET),
        _ => alice.fail(format!("SEND of exactly max_frame: expected SENDACK 0 or 4, got {a:?}")),
    }
    alice.ping_pong(1);
}

#[test]
fn send_payload_beyond_max_frame_is_frame_too_large() {
    let payload = vec![b'p'; 1100];
    run_cases(
        Config::default().max_frame(1024),
        &[("SEND with a 1100-byte payload", send_to_user(99, "carol", &payload).encode(), reason::FRAME_TOO_LARGE)],
    );
}

#[test]
fn unknown_frame_types() {
    run_cases(
        Config::default(),
        &[
            ("type 0x42", Enc::new().u64(0).frame(0x42), reason::PROTOCOL_ERROR),
            ("type 0x00", Enc::new().u64(0).frame(0x00), reason::PROTOCOL_ERROR),
            ("type 0xff", Enc::new().frame(0xff), reason::PROTOCOL_ERROR),
            ("type 0x0a", Enc::new().u8(0).str("").frame(0x0a), reason::PROTOCOL_ERROR),
        ],
    );
}

#[test]
fn truncated_fields() {
    run_cases(
        Config::default(),
        &[
            ("SEND cut inside client_msg_id", Enc::new().bytes(&[0, 0, 0, 0, 1]).frame(ty::SEND), reason::PROTOCOL_ERROR),
            ("SEND without target", Enc::new().u64(1).u8(TO_USER).frame(ty::SEND), reason::PROTOCOL_ERROR),
            (
                "SEND whose target str claims 10 bytes and has 3",
                Enc::new().u64(1).u8(TO_USER).u16(10).bytes(b"bob").frame(ty::SEND),
                reason::PROTOCOL_ERROR,
            ),
            ("PUSHACK with 4 bytes", Enc::new().u32(1).frame(ty::PUSHACK), reason::PROTOCOL_ERROR),
            ("PING with no nonce", Enc::new().frame(ty::PING), reason::PROTOCOL_ERROR),
        ],
    );
}

#[test]
fn non_utf8_str() {
    run_cases(
        Config::default(),
        &[
            ("SEND target 0xff 0xfe", send_body(TO_USER, &[0xff, 0xfe], b"x").frame(ty::SEND), reason::PROTOCOL_ERROR),
            ("SEND target with a lone continuation byte", send_body(TO_USER, b"bo\x80b", b"x").frame(ty::SEND), reason::PROTOCOL_ERROR),
            ("SEND target with an encoded surrogate", send_body(TO_USER, &[0xed, 0xa0, 0x80], b"x").frame(ty::SEND), reason::PROTOCOL_ERROR),
            ("SEND group target overlong '/'", send_body(TO_GROUP, &[0xc0, 0xaf], b"x").frame(ty::SEND), reason::PROTOCOL_ERROR),
        ],
    );
}

#[test]
fn trailing_bytes_after_fixed_fields() {
    run_cases(
        Config::default(),
        &[
            ("PUSHACK with a 9th byte", Enc::new().u64(0).u8(0).frame(ty::PUSHACK), reason::PROTOCOL_ERROR),
            ("PING with a 9th byte", Enc::new().u64(1).u8(0).frame(ty::PING), reason::PROTOCOL_ERROR),
        ],
    );
}

/// PROTOCOL.md names target kinds 1 and 2 only. ringgate's documented
/// choice: another kind is a well-formed SEND to a target that does not
/// exist, so it gets SENDACK 1 and the connection stays up (a newer client
/// trying a future kind learns it is unsupported without losing its session).
#[test]
fn unknown_target_kind_is_no_such_target() {
    let s = Config::default().start();
    let (mut m, _) = s.login("mallory", "phone", 0);
    let (mut carol, _) = s.login("carol", "phone", 0);
    for (id, kind) in [(1u64, 3u8), (2, 0), (3, 255)] {
        m.send_raw(&send_body_id(id, kind, b"carol", b"x").frame(ty::SEND)).unwrap();
        let ack = m.expect_sendack(id);
        assert_eq!(ack.status, 1, "target_kind {kind}: {ack:?}");
        assert_eq!(ack.msg_id, 0);
    }
    m.ping_pong(7);
    carol.expect_silence(QUIET);
}

fn send_body_id(id: u64, kind: u8, target: &[u8], payload: &[u8]) -> Enc {
    Enc::new().u64(id).u8(kind).str_bytes(target).bytes(payload)
}

#[test]
fn error_after_valid_frames_in_the_same_write() {
    // A good SEND followed in the same write by garbage: the SEND is handled
    // (stored and acknowledged or not, but never half-done), then the error.
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut m, _) = s.login("mallory", "phone", 0);
    let mut bytes = send_to_user(1, "bob", b"good").encode();
    bytes.extend(Enc::new().u64(0).frame(0x42));
    m.send_raw(&bytes).unwrap();
    match m.recv_frame(WAIT) {
        Ok(Frame::SendAck(a)) => {
            assert_eq!(a.status, sendack::STORED, "{a:?}");
            bob.expect_push_seq(1, b"good");
            m.expect_disconnect(reason::PROTOCOL_ERROR);
        }
        Ok(Frame::Disconnect { reason: r, .. }) => {
            assert_eq!(r, reason::PROTOCOL_ERROR);
            m.expect_closed();
        }
        other => m.fail(format!("expected SENDACK or DISCONNECT(1), got {other:?}")),
    }
}

#[test]
fn malformed_connect_is_refused() {
    // Broken CONNECT bodies: either a frame-level DISCONNECT(1) or CONNACK
    // status 4 (malformed CONNECT); never a session.
    let s = Server::default_start();
    let tok = token("alice");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CONNECT cut after keepalive", Enc::new().u8(1).u16(0).frame(ty::CONNECT)),
        ("CONNECT without last_seq", Enc::new().u8(1).u16(0).str("phone").str(&tok).frame(ty::CONNECT)),
        ("CONNECT with trailing bytes", Enc::new().u8(1).u16(0).str("phone").str(&tok).u64(0).u8(9).frame(ty::CONNECT)),
        ("CONNECT with non-UTF-8 device_id", Enc::new().u8(1).u16(0).str_bytes(&[0xff]).str(&tok).u64(0).frame(ty::CONNECT)),
        ("CONNECT of length 0", vec![0, 0, 0, 0]),
    ];
    for (name, bytes) in cases {
        let mut c = s.client();
        c.send_raw(&bytes).unwrap();
        match c.recv_frame(WAIT) {
            Ok(Frame::Disconnect { reason: reason::PROTOCOL_ERROR, .. }) => {}
            Ok(Frame::ConnAck(a)) if a.status == connack::MALFORMED => {}
            other => c.fail(format!("{name}: expected DISCONNECT(1) or CONNACK(4), got {other:?}")),
        }
        c.expect_closed();
    }
    let (mut ok, _) = s.login("alice", "phone", 0);
    ok.ping_pong(1);
}

#[test]
fn fragmented_and_coalesced_frames_are_fine() {
    // Not an error: a frame dribbled out a byte at a time, and many frames
    // in one write, are ordinary TCP.
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let frame = send_to_user(1, "bob", b"slowly").encode();
    for b in &frame {
        alice.send_raw(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(alice.expect_sendack(1).status, sendack::STORED);
    bob.expect_push_seq(1, b"slowly");

    let mut burst = Vec::new();
    for i in 2..=20u64 {
        burst.extend(send_to_user(i, "bob", &[i as u8]).encode());
        burst.extend(Frame::Ping { nonce: i }.encode());
    }
    alice.send_raw(&burst).unwrap();
    let mut pongs = 0;
    let mut acks = 0;
    while pongs < 19 || acks < 19 {
        match alice.expect_frame(WAIT, "SENDACK/PONG") {
            Frame::Pong { .. } => pongs += 1,
            Frame::SendAck(a) => {
                assert_eq!(a.status, sendack::STORED);
                acks += 1
            }
            other => alice.fail(format!("unexpected {other:?}")),
        }
    }
    for i in 2..=20u64 {
        bob.expect_push_seq(i, &[i as u8]);
    }
}
