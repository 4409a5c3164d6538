//! Session tests of the way in: rule 1 (the first frame must be a CONNECT,
//! its fields checked), what `accept` puts in CONNACK, the handshake
//! timeout, and the pre-authentication frame cap.

use super::*;

// ---------------------------------------------------------------------------
// Rule 1: connect
// ---------------------------------------------------------------------------

#[test]
fn first_frame_not_connect_is_protocol_error_then_linger_finishes() {
    let mut h = H::with(limits(), 500);
    h.send(&Frame::Ping { nonce: 1 });
    assert_eq!(h.poll(), Event::Closed);
    assert_disconnect(&h.take(), DisconnectReason::ProtocolError);
    assert_eq!(h.s.phase(), Phase::Closing);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::ProtocolError));
    assert_eq!(h.s.next_deadline(), Some(500 + CLOSE_LINGER_MS));

    // Whatever the device sends after our DISCONNECT is dropped unread.
    h.send(&connect(1, 0, "phone", "tok", 0));
    assert_eq!(h.poll(), Event::NeedMore);
    assert!(h.rbuf.is_empty());
    assert!(h.take().is_empty());

    h.timeout(500 + CLOSE_LINGER_MS - 1);
    assert_eq!(h.s.phase(), Phase::Closing);
    h.timeout(500 + CLOSE_LINGER_MS);
    assert_eq!(h.s.phase(), Phase::Finished);
    assert_eq!(h.s.next_deadline(), None);
    assert!(h.take().is_empty(), "finishing writes nothing");
}

#[test]
fn first_frame_of_every_other_type_is_protocol_error() {
    let others = [
        Frame::Pong { nonce: 1 },
        Frame::PushAck { seq: 1 },
        Frame::Send(frame::Send {
            client_msg_id: 1,
            target_kind: 1,
            target: "bob".into(),
            payload: bytes::Bytes::from_static(b"x"),
        }),
        Frame::Disconnect { reason: 0, message: "bye".into() },
        Frame::SendAck(SendAck { client_msg_id: 1, status: 0, msg_id: 1, timestamp_ms: 1 }),
    ];
    for f in others {
        let mut h = H::new();
        h.send(&f);
        assert_eq!(h.poll(), Event::Closed, "{f:?}");
        assert_disconnect(&h.take(), DisconnectReason::ProtocolError);
        assert_eq!(h.s.phase(), Phase::Closing, "{f:?}");
    }
}

#[test]
fn malformed_first_frame_is_disconnect_not_connack() {
    let mut h = H::new();
    // A CONNECT cut short inside last_seq.
    let mut raw = BytesMut::new();
    connect(1, 0, "phone", "tok", 0).encode(&mut raw);
    let cut = raw.len() - 3;
    let mut b = raw[..cut].to_vec();
    b[..4].copy_from_slice(&((cut - 4) as u32).to_be_bytes());
    h.send_raw(&b);
    assert_eq!(h.poll(), Event::Closed);
    assert_disconnect(&h.take(), DisconnectReason::ProtocolError);
}

#[test]
fn wrong_version_is_refused_with_status_1() {
    for version in [0u8, 2, 255] {
        let mut h = H::new();
        h.send(&connect(version, 0, "phone", "tok", 0));
        assert_eq!(h.poll(), Event::Closed);
        assert_refused(&h.take(), connack::UNSUPPORTED_VERSION);
        assert_eq!(h.s.phase(), Phase::Closing);
        assert_eq!(h.s.next_deadline(), Some(CLOSE_LINGER_MS));
    }
}

#[test]
fn malformed_connect_fields_are_refused_with_status_4() {
    let long_device = "d".repeat(MAX_DEVICE_ID + 1);
    let long_token = "t".repeat(MAX_TOKEN + 1);
    assert_eq!(long_device.len(), 65);
    assert_eq!(long_token.len(), 4097);
    let cases = [("", "tok"), (long_device.as_str(), "tok"), ("phone", long_token.as_str())];
    for (device, token) in cases {
        let mut h = H::new();
        h.send(&connect(1, 0, device, token, 0));
        assert_eq!(h.poll(), Event::Closed, "device {} bytes, token {} bytes", device.len(), token.len());
        assert_refused(&h.take(), connack::MALFORMED);
        assert_eq!(h.s.phase(), Phase::Closing);
    }
}

#[test]
fn connect_fields_at_their_limits_are_accepted() {
    let device = "d".repeat(MAX_DEVICE_ID);
    let token = "t".repeat(MAX_TOKEN);
    for (device, token) in [(device.as_str(), token.as_str()), ("x", "")] {
        let mut h = H::new();
        h.send(&connect(1, 0, device, token, 0));
        match h.poll() {
            Event::Connect(r) => {
                assert_eq!(r.device_id.as_str(), device);
                assert_eq!(r.token.as_str(), token);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
        assert!(h.take().is_empty());
    }
}

#[test]
fn valid_connect_is_handed_out_and_nothing_more_is_consumed_until_accept() {
    let mut h = H::new();
    h.send(&connect(1, 20, "phone", "secret", 42));
    h.send(&Frame::Ping { nonce: 7 });
    h.send(&Frame::PushAck { seq: 1 });
    let pipelined = {
        let mut b = BytesMut::new();
        Frame::Ping { nonce: 7 }.encode(&mut b);
        Frame::PushAck { seq: 1 }.encode(&mut b);
        b.len()
    };

    let req = match h.poll() {
        Event::Connect(r) => r,
        other => panic!("expected Connect, got {other:?}"),
    };
    assert_eq!(
        req,
        ConnectRequest { keepalive_s: 20, device_id: "phone".into(), token: "secret".into(), last_seq: 42 }
    );
    assert_eq!(h.s.phase(), Phase::Authenticating);
    assert!(h.take().is_empty(), "nothing is written before the server decides");

    // Authenticating: the pipelined frames stay buffered, however often we poll.
    for _ in 0..3 {
        assert_eq!(h.poll(), Event::NeedMore);
        assert_eq!(h.rbuf.len(), pipelined);
    }
    assert!(h.take().is_empty());
    assert_eq!(h.s.fill(h.now, &h.lim, &h.inbox, &mut h.out), 0, "no PUSH before accept");

    let bounds = h.inbox.bounds();
    h.s.accept(h.now, WALL_MS, &h.lim, "alice", &req, bounds, 0, &mut h.out);
    assert!(matches!(h.take().as_slice(), [Frame::ConnAck(c)] if c.status == connack::OK));
    assert_eq!(h.poll(), Event::Handled);
    assert_eq!(h.take(), vec![Frame::Pong { nonce: 7 }]);
    assert_eq!(h.poll(), Event::Handled, "PUSHACK with nothing sent changes nothing");
    assert_eq!(h.poll(), Event::NeedMore);
    assert!(h.rbuf.is_empty());
}

#[test]
fn connect_split_across_reads_waits_for_the_whole_frame() {
    let mut h = H::new();
    let mut b = BytesMut::new();
    connect(1, 0, "phone", "tok", 0).encode(&mut b);
    for i in 0..b.len() - 1 {
        h.send_raw(&b[i..i + 1]);
        assert_eq!(h.poll(), Event::NeedMore, "after {} bytes", i + 1);
        assert_eq!(h.s.phase(), Phase::AwaitConnect);
    }
    h.send_raw(&b[b.len() - 1..]);
    assert!(matches!(h.poll(), Event::Connect(_)));
}

#[test]
fn server_refusal_writes_connack_and_closes() {
    let mut h = H::new();
    h.send(&connect(1, 0, "phone", "expired", 0));
    assert!(matches!(h.poll(), Event::Connect(_)));
    h.now = 40;
    h.s.refuse(h.now, &h.lim, connack::BAD_TOKEN, &mut h.out);
    assert_refused(&h.take(), connack::BAD_TOKEN);
    assert_eq!(h.s.phase(), Phase::Closing);
    assert_eq!(h.s.next_deadline(), Some(40 + CLOSE_LINGER_MS));
    h.timeout(40 + CLOSE_LINGER_MS);
    assert_eq!(h.s.phase(), Phase::Finished);
}

// ---------------------------------------------------------------------------
// accept: CONNACK fields and heartbeat negotiation
// ---------------------------------------------------------------------------

#[test]
fn connack_carries_user_limits_bounds_and_wall_clock() {
    let mut h = H::with(limits(), 1_234);
    h.inbox = FakeInbox::with_head(7);
    h.inbox.retain_from(3);
    let c = h.open(0);
    assert_eq!(
        c,
        ConnAck {
            status: connack::OK,
            user_id: "alice".into(),
            heartbeat_s: 30,
            max_frame: 65_536,
            oldest_seq: 3,
            head_seq: 7,
            server_time_ms: WALL_MS,
        }
    );
}

#[test]
fn connack_of_a_new_user_reports_head_0_oldest_1() {
    let mut h = H::new();
    let c = h.open(0);
    assert_eq!((c.oldest_seq, c.head_seq), (1, 0));
    assert_eq!(h.fill(), 0);
}

#[test]
fn heartbeat_negotiation_takes_a_lower_device_value_only() {
    // (device keepalive_s, server heartbeat_s) -> enforced
    let cases = [(10u16, 30u16, 10u16), (1, 30, 1), (29, 30, 29), (0, 30, 30), (30, 30, 30), (31, 30, 30), (u16::MAX, 30, 30)];
    for (keepalive, server, want) in cases {
        let lim = SessionLimits { heartbeat_s: server, ..limits() };
        let mut h = H::with(lim, 0);
        let c = h.open_with(keepalive, 0, 0);
        assert_eq!(c.heartbeat_s, want, "keepalive {keepalive} vs server {server}");
        assert_eq!(h.s.heartbeat_s(), want);
        // The idle deadline follows the negotiated value, not the configured one.
        assert_eq!(h.s.next_deadline(), Some(want as u64 * 2_500), "keepalive {keepalive}");
    }
}

#[test]
fn connack_advertises_the_configured_max_frame() {
    let lim = SessionLimits { max_frame: 4_096, ..limits() };
    let mut h = H::with(lim, 0);
    assert_eq!(h.open(0).max_frame, 4_096);
}

// ---------------------------------------------------------------------------
// Handshake timeout
// ---------------------------------------------------------------------------

#[test]
fn handshake_timeout_closes_with_9_and_not_a_millisecond_early() {
    let mut h = H::with(limits(), 1_000);
    assert_eq!(h.s.next_deadline(), Some(11_000));
    // Half a CONNECT does not count as a CONNECT.
    let mut b = BytesMut::new();
    connect(1, 0, "phone", "tok", 0).encode(&mut b);
    h.send_raw(&b[..b.len() / 2]);
    assert_eq!(h.poll(), Event::NeedMore);

    h.timeout(10_999);
    assert_eq!(h.s.phase(), Phase::AwaitConnect);
    assert!(h.take().is_empty());
    assert_eq!(h.s.next_deadline(), Some(11_000));

    h.timeout(11_000);
    assert_disconnect(&h.take(), DisconnectReason::HandshakeTimeout);
    assert_eq!(h.s.phase(), Phase::Closing);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::HandshakeTimeout));
    assert_eq!(h.s.next_deadline(), Some(11_000 + CLOSE_LINGER_MS));
}

#[test]
fn handshake_timeout_also_bounds_authentication() {
    let mut h = H::new();
    h.now = 9_000;
    h.send(&connect(1, 0, "phone", "tok", 0));
    assert!(matches!(h.poll(), Event::Connect(_)));
    assert_eq!(h.s.next_deadline(), Some(10_000), "receiving CONNECT does not extend the handshake");
    h.timeout(9_999);
    assert_eq!(h.s.phase(), Phase::Authenticating);
    h.timeout(10_000);
    assert_disconnect(&h.take(), DisconnectReason::HandshakeTimeout);
}

#[test]
fn accept_cancels_the_handshake_deadline() {
    let mut h = H::new();
    h.now = 9_999;
    h.open(0);
    assert_eq!(h.s.next_deadline(), Some(9_999 + IDLE_30S_MS));
    h.timeout(10_000);
    assert_eq!(h.s.phase(), Phase::Open);
    assert!(h.take().is_empty());
}


#[test]
fn before_connect_a_frame_above_the_preauth_cap_is_refused_at_its_prefix() {
    // An anonymous peer announcing a max_frame-sized frame must not make the
    // server buffer it: the 4-byte prefix alone earns DISCONNECT(2).
    let mut h = H::new();
    assert!(h.lim.max_frame > MAX_PREAUTH_FRAME);
    h.send_raw(&(MAX_PREAUTH_FRAME + 1).to_be_bytes());
    assert_eq!(h.poll(), Event::Closed);
    assert_disconnect(&h.take(), DisconnectReason::FrameTooLarge);
    // At the cap it is waited for, and after CONNECT max_frame applies again.
    let mut h = H::new();
    h.send_raw(&MAX_PREAUTH_FRAME.to_be_bytes());
    assert_eq!(h.poll(), Event::NeedMore);
    let mut h = H::new();
    h.open(0);
    let mut b = (MAX_PREAUTH_FRAME + 1).to_be_bytes().to_vec();
    b.push(frame::T_SEND);
    h.send_raw(&b);
    assert_eq!(h.poll(), Event::NeedMore);
    assert_eq!(h.s.phase(), Phase::Open);
}
