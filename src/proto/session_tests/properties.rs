//! Property tests of the session: arbitrary input and timers never panic
//! and always wind down; pushes are ordered, windowed and bounded.

use super::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Arbitrary bytes, as they come off the wire.
    Bytes(Vec<u8>),
    /// A correctly length-prefixed frame of any type byte with an arbitrary body.
    Raw(u8, Vec<u8>),
    /// A well-formed frame, possibly delivered in two reads.
    Frame(Frame, usize),
    Timeout { dt: u64, blocked: bool },
    Append(u8),
    Retain(u8),
    Close,
}

fn arb_client_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        (0u64..24).prop_map(|seq| Frame::PushAck { seq }),
        any::<u64>().prop_map(|seq| Frame::PushAck { seq }),
        (any::<u64>(), 0u8..4, "[a-z]{0,6}", proptest::collection::vec(any::<u8>(), 0..16)).prop_map(
            |(id, kind, target, payload)| Frame::Send(frame::Send {
                client_msg_id: id,
                target_kind: kind,
                target: Utf8Bytes::from(target.as_str()),
                payload: bytes::Bytes::from(payload),
            })
        ),
        (0u8..3, any::<u16>(), "[a-z]{0,4}", "[a-z]{0,4}", 0u64..24).prop_map(|(v, k, d, t, l)| connect(v, k, &d, &t, l)),
        (0u8..10, "[a-z]{0,8}").prop_map(|(reason, m)| Frame::Disconnect { reason, message: Utf8Bytes::from(m.as_str()) }),
        (0u64..24, 0u8..2).prop_map(|(seq, flags)| Frame::Push(Push {
            seq,
            msg_id: 0,
            timestamp_ms: 0,
            from: "x".into(),
            flags,
            payload: bytes::Bytes::new(),
        })),
        Just(Frame::SendAck(SendAck { client_msg_id: 1, status: 0, msg_id: 1, timestamp_ms: 1 })),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..48).prop_map(Op::Bytes),
        3 => (0u8..12, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(t, b)| Op::Raw(t, b)),
        6 => (arb_client_frame(), 0usize..64).prop_map(|(f, cut)| Op::Frame(f, cut)),
        4 => (prop_oneof![0u64..300, 0u64..200_000], any::<bool>()).prop_map(|(dt, blocked)| Op::Timeout { dt, blocked }),
        2 => (1u8..6).prop_map(Op::Append),
        1 => (0u8..4).prop_map(Op::Retain),
        1 => Just(Op::Close),
    ]
}

/// How the fake server answers a CONNECT in the fuzz-style property.
#[derive(Clone, Copy, Debug)]
enum Auth {
    Accept { token_exp_ms: u64 },
    Refuse,
    Never,
}

fn arb_auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        3 => prop_oneof![Just(0u64), 0u64..400_000].prop_map(|token_exp_ms| Auth::Accept { token_exp_ms }),
        1 => Just(Auth::Refuse),
        1 => Just(Auth::Never),
    ]
}

/// Runs the session over `rbuf` the way the runtime does, answering events.
fn pump(h: &mut H, auth: Auth) {
    for _ in 0..10_000 {
        match h.poll() {
            Event::NeedMore | Event::Closed => return,
            Event::Handled | Event::Send(_) => {}
            Event::Acked => {
                h.fill();
            }
            Event::Connect(req) => match auth {
                Auth::Accept { token_exp_ms } => {
                    let bounds = h.inbox.bounds();
                    h.s.accept(h.now, WALL_MS, &h.lim, "alice", &req, bounds, token_exp_ms, &mut h.out);
                    h.fill();
                }
                Auth::Refuse => h.s.refuse(h.now, &h.lim, connack::BAD_TOKEN, &mut h.out),
                Auth::Never => {}
            },
        }
    }
    panic!("poll_frame never ran out of frames");
}

/// Everything written is valid frames; a phase change into Closing is
/// announced by exactly the last frame (DISCONNECT or a refusing CONNACK);
/// nothing at all is written once closing.
fn check_output(h: &mut H, before: Phase) {
    let frames = h.take();
    let after = h.s.phase();
    if matches!(before, Phase::Closing | Phase::Finished) {
        assert!(frames.is_empty(), "wrote {frames:?} while {before:?}");
    }
    if after == Phase::Closing && before != Phase::Closing {
        match frames.last() {
            Some(Frame::Disconnect { .. }) => {}
            Some(Frame::ConnAck(c)) if c.status != connack::OK => {}
            other => panic!("entered Closing without saying why: last frame {other:?}"),
        }
    }
    for f in &frames {
        if let Frame::Push(p) = f {
            assert_push_matches_entry(p);
            assert!(p.seq <= h.inbox.head());
        }
    }
    assert!(h.s.inflight() <= h.lim.inflight_window.max(1) as u64);
    assert_eq!(h.s.next_deadline().is_none(), after == Phase::Finished);
}

/// The limits of the property tests: every timer fires within a second or so
/// of virtual time except idle (75 s), which the large `dt`s reach.
fn prop_limits() -> SessionLimits {
    SessionLimits { max_frame: 256, ..limits() }
}

/// Inbox `(head, oldest)` with `1 <= oldest <= head + 1`.
fn arb_inbox() -> impl Strategy<Value = (u64, u64)> {
    (0u64..12).prop_flat_map(|head| (Just(head), 1..=head + 1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary input in any phase, arbitrary timer expiries: no panic, only
    /// valid frames out, and then following `next_deadline` alone reaches
    /// Finished within a few steps, each step moving the deadline forward.
    #[test]
    fn arbitrary_input_and_timers_never_panic_and_always_wind_down(
        start_open in any::<bool>(),
        start_last_seq in 0u64..20,
        auth in arb_auth(),
        (head, oldest) in arb_inbox(),
        ops in proptest::collection::vec(arb_op(), 0..40),
    ) {
        let mut h = H::with(prop_limits(), 0);
        h.inbox = FakeInbox::with_head(head);
        h.inbox.retain_from(oldest);
        if start_open {
            h.send(&connect(1, 0, "phone", "tok", start_last_seq));
            pump(&mut h, Auth::Accept { token_exp_ms: 0 });
            prop_assert_eq!(h.s.phase(), Phase::Open);
            h.take();
        }
        for op in ops {
            let before = h.s.phase();
            match op {
                Op::Bytes(b) => {
                    h.send_raw(&b);
                    pump(&mut h, auth);
                }
                Op::Raw(ty, body) => {
                    h.send_raw(&raw_frame(ty, &body));
                    pump(&mut h, auth);
                }
                Op::Frame(f, cut) => {
                    let mut b = BytesMut::new();
                    f.encode(&mut b);
                    let cut = cut.min(b.len());
                    h.send_raw(&b[..cut]);
                    pump(&mut h, auth);
                    h.send_raw(&b[cut..]);
                    pump(&mut h, auth);
                }
                Op::Timeout { dt, blocked } => {
                    let t = h.now + dt;
                    let due = h.s.next_deadline().is_some_and(|d| d <= t);
                    if blocked { h.timeout_blocked(t) } else { h.timeout(t) }
                    if due {
                        // Something was due: it was handled, not left in the past.
                        prop_assert!(h.s.next_deadline().map_or(true, |d| d > t),
                            "deadline {:?} not after {} in {:?}", h.s.next_deadline(), t, h.s.phase());
                    }
                }
                Op::Append(n) => {
                    for _ in 0..n { h.inbox.append(); }
                    h.fill();
                }
                Op::Retain(k) => {
                    let o = (h.inbox.oldest + k as u64).min(h.inbox.head() + 1);
                    h.inbox.retain_from(o);
                    h.fill();
                }
                Op::Close => h.s.close(h.now, DisconnectReason::ServerShutdown, "shutdown", &mut h.out),
            }
            check_output(&mut h, before);
        }

        // Wind down on timers alone.
        let mut steps = 0;
        while let Some(d) = h.s.next_deadline() {
            prop_assert!(steps < 10, "not Finished after {} timer steps (phase {:?})", steps, h.s.phase());
            let before = h.s.phase();
            let t = d.max(h.now);
            h.timeout(t);
            check_output(&mut h, before);
            prop_assert!(h.s.next_deadline().map_or(true, |n| n > t), "timer at {} did not move the deadline", t);
            steps += 1;
        }
        prop_assert_eq!(h.s.phase(), Phase::Finished);
    }
}

#[derive(Clone, Debug)]
enum DOp {
    Append(u8),
    /// PUSHACK(acked + k): stale at 0, possibly beyond what was sent.
    AckAhead(u64),
    /// PUSHACK of a seq at or below what is acked.
    AckStale(u64),
    AckEverything,
    Timeout(u64),
    Retain(u8),
    Ping,
}

fn arb_dop() -> impl Strategy<Value = DOp> {
    prop_oneof![
        4 => (1u8..5).prop_map(DOp::Append),
        4 => (0u64..8).prop_map(DOp::AckAhead),
        1 => any::<u64>().prop_map(DOp::AckStale),
        1 => Just(DOp::AckEverything),
        3 => (0u64..250).prop_map(DOp::Timeout),
        1 => (0u8..5).prop_map(DOp::Retain),
        1 => Just(DOp::Ping),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The device's view of delivery under appends, acks, retention and
    /// timer expiries: a PUSH is either the next new seq (dense, except
    /// across what retention dropped; REDELIVERY only for replays up to the
    /// head at connect) or a flagged resend of something sent and unacked;
    /// no seq beyond head; the window is never exceeded.
    #[test]
    fn pushes_are_ordered_windowed_and_bounded(
        (head, oldest) in arb_inbox(),
        last_seq in 0u64..16,
        window in 1u32..6,
        ops in proptest::collection::vec(arb_dop(), 0..80),
    ) {
        let lim = SessionLimits { inflight_window: window, max_retries: 3, ..limits() };
        let mut h = H::with(lim, 0);
        h.inbox = FakeInbox::with_head(head);
        h.inbox.retain_from(oldest);
        let c = h.open(last_seq);
        let replay_until = c.head_seq;
        // What the device has seen as new so far (its cursor starts at the
        // session's: last_seq clamped into [oldest - 1, head]).
        let mut max_seen = last_seq.min(head).max(oldest - 1);
        prop_assert_eq!(h.s.acked(), max_seen);
        let mut last_fresh: Option<u64> = None;
        h.fill();

        // A leading Ping checks the pushes of the fill at open before any
        // op can move the inbox under them.
        for op in std::iter::once(DOp::Ping).chain(ops) {
            let acked_before = h.s.acked();
            let sent_before = h.s.sent();
            match op {
                DOp::Append(n) => for _ in 0..n { h.inbox.append(); },
                DOp::AckAhead(k) => h.send(&Frame::PushAck { seq: h.s.acked().saturating_add(k) }),
                DOp::AckStale(x) => h.send(&Frame::PushAck { seq: x % (h.s.acked() + 1) }),
                DOp::AckEverything => h.send(&Frame::PushAck { seq: max_seen }),
                DOp::Timeout(dt) => { let t = h.now + dt; h.timeout(t); }
                DOp::Retain(k) => {
                    let o = (h.inbox.oldest + k as u64).min(h.inbox.head() + 1);
                    h.inbox.retain_from(o);
                }
                DOp::Ping => h.send(&Frame::Ping { nonce: 0 }),
            }
            // The runtime: run the frames, fill on Acked, and fill after appends.
            pump(&mut h, Auth::Never);
            h.fill();

            for f in h.take() {
                let p = match f {
                    Frame::Push(p) => p,
                    Frame::Pong { .. } | Frame::Disconnect { .. } => continue,
                    other => panic!("unexpected {other:?}"),
                };
                assert_push_matches_entry(&p);
                prop_assert!(p.seq <= h.inbox.head(), "PUSH {} beyond head {}", p.seq, h.inbox.head());
                prop_assert!(p.seq >= h.inbox.oldest, "PUSH {} below oldest {}", p.seq, h.inbox.oldest);
                if p.seq > max_seen {
                    // New: the next seq, or the first retained one after a gap.
                    let want = (max_seen + 1).max(h.inbox.oldest);
                    prop_assert_eq!(p.seq, want, "new PUSH out of order after {}", max_seen);
                    let want_flags = if p.seq <= replay_until { FLAG_REDELIVERY } else { 0 };
                    prop_assert_eq!(p.flags, want_flags, "flags of new PUSH {}", p.seq);
                    if p.flags & FLAG_REDELIVERY == 0 {
                        prop_assert!(last_fresh.map_or(true, |l| p.seq > l));
                        last_fresh = Some(p.seq);
                    }
                    max_seen = p.seq;
                } else {
                    // A resend: flagged, of something sent and not acked.
                    prop_assert_eq!(p.flags, FLAG_REDELIVERY, "resend of {} unflagged", p.seq);
                    prop_assert!(p.seq > acked_before.min(h.s.acked()) && p.seq <= sent_before.max(h.s.sent()),
                        "resend of {} outside unacked ({}..={})", p.seq, acked_before, sent_before);
                }
            }
            prop_assert!(h.s.inflight() <= window as u64, "inflight {} > window {}", h.s.inflight(), window);
            prop_assert_eq!(h.s.sent(), max_seen.max(h.s.sent()));
            if h.s.phase() != Phase::Open {
                break;
            }
        }
    }
}
