//! Session tests of how a connection ends: rule 7 (PING/PONG and the idle
//! deadline), token expiry, and every close path (device DISCONNECT,
//! protocol errors while open, frame limits, close and abort).

use super::*;

// ---------------------------------------------------------------------------
// Rule 7: heartbeat and idle
// ---------------------------------------------------------------------------

#[test]
fn ping_is_answered_with_pong_echoing_the_nonce() {
    let mut h = H::new();
    h.open(0);
    for nonce in [0, 42, u64::MAX] {
        h.send(&Frame::Ping { nonce });
        assert_eq!(h.poll(), Event::Handled);
        assert_eq!(h.take(), vec![Frame::Pong { nonce }]);
    }
    // A PONG from the device is just liveness: nothing to answer.
    h.send(&Frame::Pong { nonce: 5 });
    assert_eq!(h.poll(), Event::Handled);
    assert!(h.take().is_empty());
}

#[test]
fn idle_close_at_two_and_a_half_heartbeats_exactly() {
    let mut h = H::new();
    h.open(0);
    assert_eq!(h.s.next_deadline(), Some(IDLE_30S_MS));
    h.timeout(IDLE_30S_MS - 1);
    assert!(h.take().is_empty());
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout(IDLE_30S_MS);
    assert_disconnect(&h.take(), DisconnectReason::IdleTimeout);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::IdleTimeout));
    assert_eq!(h.s.phase(), Phase::Closing);
}

#[test]
fn idle_counts_from_accept_not_from_the_tcp_accept() {
    let mut h = H::new();
    h.now = 8_000;
    h.open(0);
    h.timeout(IDLE_30S_MS);
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout(8_000 + IDLE_30S_MS);
    assert_disconnect(&h.take(), DisconnectReason::IdleTimeout);
}

#[test]
fn any_received_frame_pushes_the_idle_deadline_later() {
    let mut h = H::new();
    h.open(0);
    h.now = 60_000;
    h.send(&Frame::Ping { nonce: 1 });
    assert_eq!(h.poll(), Event::Handled);
    h.take();
    assert_eq!(h.s.next_deadline(), Some(60_000 + IDLE_30S_MS));

    // The wheel may still fire at the old deadline: nothing is due then.
    h.timeout(IDLE_30S_MS);
    assert!(h.take().is_empty());
    assert_eq!(h.s.phase(), Phase::Open);

    // A stale PUSHACK is also a sign of life.
    h.now = 100_000;
    h.send(&Frame::PushAck { seq: 0 });
    assert_eq!(h.poll(), Event::Handled);
    assert_eq!(h.s.next_deadline(), Some(100_000 + IDLE_30S_MS));
    h.timeout(100_000 + IDLE_30S_MS - 1);
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout(100_000 + IDLE_30S_MS);
    assert_disconnect(&h.take(), DisconnectReason::IdleTimeout);
}

#[test]
fn a_partial_frame_is_not_a_sign_of_life() {
    let mut h = H::new();
    h.open(0);
    h.now = 60_000;
    let mut b = BytesMut::new();
    Frame::Ping { nonce: 1 }.encode(&mut b);
    h.send_raw(&b[..5]);
    assert_eq!(h.poll(), Event::NeedMore);
    assert_eq!(h.s.next_deadline(), Some(IDLE_30S_MS));
}

#[test]
fn idle_uses_the_negotiated_heartbeat() {
    let mut h = H::new();
    h.open_with(4, 0, 0); // 4 s < 30 s
    assert_eq!(h.s.next_deadline(), Some(10_000));
    h.timeout(9_999);
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout(10_000);
    assert_disconnect(&h.take(), DisconnectReason::IdleTimeout);
}

#[test]
fn idle_wins_over_a_due_retransmission() {
    // A device that sends nothing at all is idle, whatever it owes us.
    let lim = SessionLimits { ack_timeout_ms: IDLE_30S_MS, max_retries: 5, ..limits() };
    let mut h = H::with(lim, 0);
    h.inbox = FakeInbox::with_head(1);
    h.open(0);
    h.fill();
    h.take();
    assert_eq!(h.s.next_deadline(), Some(IDLE_30S_MS));
    h.timeout(IDLE_30S_MS);
    assert_disconnect(&h.take(), DisconnectReason::IdleTimeout);
}

// ---------------------------------------------------------------------------
// Token expiry
// ---------------------------------------------------------------------------

#[test]
fn token_expiry_closes_with_3() {
    let mut h = H::new();
    h.open_with(0, 0, 5_000);
    assert_eq!(h.s.next_deadline(), Some(5_000));
    h.timeout(4_999);
    assert!(h.take().is_empty());
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout(5_000);
    assert_disconnect(&h.take(), DisconnectReason::TokenExpired);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::TokenExpired));
    assert_eq!(h.s.phase(), Phase::Closing);
}

#[test]
fn token_expiry_is_not_moved_by_activity() {
    let mut h = H::new();
    h.open_with(0, 0, 5_000);
    h.now = 4_000;
    h.send(&Frame::Ping { nonce: 1 });
    h.poll();
    h.take();
    assert_eq!(h.s.next_deadline(), Some(5_000));
    h.timeout(5_000);
    assert_disconnect(&h.take(), DisconnectReason::TokenExpired);
}

#[test]
fn token_exp_zero_never_expires() {
    let mut h = H::new();
    h.open_with(0, 0, 0);
    assert_eq!(h.s.next_deadline(), Some(IDLE_30S_MS));
}

// ---------------------------------------------------------------------------
// Close paths
// ---------------------------------------------------------------------------

#[test]
fn device_disconnect_finishes_silently() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(2);
    h.open(0);
    h.fill();
    h.take();
    h.send(&Frame::Disconnect { reason: 0, message: "bye".into() });
    h.send(&Frame::Ping { nonce: 1 }); // after goodbye: never answered
    assert_eq!(h.poll(), Event::Closed);
    assert_eq!(h.s.phase(), Phase::Finished);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::Normal));
    assert_eq!(h.s.next_deadline(), None, "no linger, no ack timer");
    assert_eq!(h.poll(), Event::NeedMore);
    h.timeout(1_000_000);
    assert_eq!(h.fill(), 0);
    assert!(h.take().is_empty(), "nothing is written to a device that said goodbye");
}

#[test]
fn server_direction_frames_from_the_device_are_protocol_errors() {
    let frames = [
        Frame::ConnAck(ConnAck {
            status: 0,
            user_id: "alice".into(),
            heartbeat_s: 30,
            max_frame: 1,
            oldest_seq: 1,
            head_seq: 0,
            server_time_ms: 0,
        }),
        Frame::SendAck(SendAck { client_msg_id: 1, status: 0, msg_id: 2, timestamp_ms: 3 }),
        Frame::Push(Push {
            seq: 1,
            msg_id: 1,
            timestamp_ms: 1,
            from: "bob".into(),
            flags: 0,
            payload: bytes::Bytes::from_static(b"hi"),
        }),
        connect(1, 0, "phone", "tok", 0), // a second CONNECT
    ];
    for f in frames {
        let mut h = H::new();
        h.open(0);
        h.now = 10;
        h.send(&f);
        h.send(&Frame::Ping { nonce: 1 });
        assert_eq!(h.poll(), Event::Closed, "{}", f.name());
        assert_disconnect(&h.take(), DisconnectReason::ProtocolError);
        assert_eq!(h.s.phase(), Phase::Closing, "{}", f.name());
        assert_eq!(h.s.next_deadline(), Some(10 + CLOSE_LINGER_MS));
        assert_eq!(h.poll(), Event::NeedMore);
        assert!(h.take().is_empty(), "the PING behind it is not answered");
    }
}

#[test]
fn malformed_frames_while_open_close_with_the_right_reason() {
    let max = limits().max_frame;
    let mut bad_send = BytesMut::new();
    bad_send.put_u64(1);
    bad_send.put_u8(1);
    bad_send.put_u16(2);
    bad_send.put_slice(&[0xff, 0xfe]);
    let cases: Vec<(&str, Vec<u8>, DisconnectReason)> = vec![
        ("length 0", vec![0, 0, 0, 0], DisconnectReason::ProtocolError),
        // The prefix alone: no body byte has arrived, and none is awaited.
        ("length above max_frame", (max + 1).to_be_bytes().to_vec(), DisconnectReason::FrameTooLarge),
        ("length u32::MAX", u32::MAX.to_be_bytes().to_vec(), DisconnectReason::FrameTooLarge),
        ("unknown type", raw_frame(0x42, &[1, 2, 3]), DisconnectReason::ProtocolError),
        ("type 0", raw_frame(0x00, &[]), DisconnectReason::ProtocolError),
        ("truncated PUSHACK", raw_frame(frame::T_PUSHACK, &[0, 0, 0]), DisconnectReason::ProtocolError),
        ("truncated PING", raw_frame(frame::T_PING, &[]), DisconnectReason::ProtocolError),
        ("str longer than frame", raw_frame(frame::T_DISCONNECT, &[0, 0, 9, b'a']), DisconnectReason::ProtocolError),
        ("non-UTF-8 SEND target", raw_frame(frame::T_SEND, &bad_send), DisconnectReason::ProtocolError),
        ("trailing bytes after PING", raw_frame(frame::T_PING, &[0, 0, 0, 0, 0, 0, 0, 1, 9]), DisconnectReason::ProtocolError),
        ("trailing bytes after PUSHACK", raw_frame(frame::T_PUSHACK, &[0; 9]), DisconnectReason::ProtocolError),
    ];
    for (name, bytes, reason) in cases {
        let mut h = H::new();
        h.open(0);
        h.now = 77;
        h.send_raw(&bytes);
        assert_eq!(h.poll(), Event::Closed, "{name}");
        assert_disconnect(&h.take(), reason);
        assert_eq!(h.s.phase(), Phase::Closing, "{name}");
        assert_eq!(h.s.close_reason(), Some(reason), "{name}");
        assert_eq!(h.s.next_deadline(), Some(77 + CLOSE_LINGER_MS), "{name}");
        // Idempotent close: the second call writes nothing and keeps the reason.
        h.s.close(h.now, DisconnectReason::ServerShutdown, "again", &mut h.out);
        assert!(h.take().is_empty(), "{name}: second close wrote");
        assert_eq!(h.s.close_reason(), Some(reason), "{name}");
        assert_eq!(h.poll(), Event::NeedMore, "{name}");
    }
}

#[test]
fn largest_allowed_frame_is_waited_for_not_refused() {
    let mut h = H::new();
    h.open(0);
    let max = h.lim.max_frame;
    let mut b = max.to_be_bytes().to_vec();
    b.push(frame::T_SEND);
    h.send_raw(&b);
    assert_eq!(h.poll(), Event::NeedMore);
    assert_eq!(h.s.phase(), Phase::Open);
}

#[test]
fn max_frame_is_enforced_against_the_limit_not_a_constant() {
    let lim = SessionLimits { max_frame: 32, ..limits() };
    let mut h = H::with(lim, 0);
    h.open(0);
    h.send(&Frame::Send(frame::Send {
        client_msg_id: 1,
        target_kind: 1,
        target: "bob".into(),
        payload: bytes::Bytes::from(vec![0u8; 64]),
    }));
    assert_eq!(h.poll(), Event::Closed);
    assert_disconnect(&h.take(), DisconnectReason::FrameTooLarge);
}

#[test]
fn close_is_idempotent_and_stops_pushes() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(5);
    h.open(0);
    h.fill();
    h.take();
    h.now = 5;
    h.s.close(h.now, DisconnectReason::ServerShutdown, "bye", &mut h.out);
    assert_disconnect(&h.take(), DisconnectReason::ServerShutdown);
    assert_eq!(h.s.phase(), Phase::Closing);
    h.s.close(h.now, DisconnectReason::Replaced, "again", &mut h.out);
    assert!(h.take().is_empty());
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::ServerShutdown));

    // Closing: no ack timer any more, no fill, nothing resent.
    assert_eq!(h.s.next_deadline(), Some(5 + CLOSE_LINGER_MS));
    h.send(&Frame::PushAck { seq: 2 });
    assert_eq!(h.poll(), Event::NeedMore);
    assert_eq!(h.fill(), 0);
    h.timeout(100);
    assert!(h.take().is_empty());
    h.timeout(5 + CLOSE_LINGER_MS);
    assert_eq!(h.s.phase(), Phase::Finished);
    h.s.close(h.now, DisconnectReason::Normal, "late", &mut h.out);
    assert!(h.take().is_empty());
    assert_eq!(h.s.phase(), Phase::Finished);
}

#[test]
fn abort_finishes_without_writing() {
    let mut h = H::new();
    h.open(0);
    h.s.abort();
    assert_eq!(h.s.phase(), Phase::Finished);
    assert_eq!(h.s.next_deadline(), None);
    assert!(h.take().is_empty());
}
