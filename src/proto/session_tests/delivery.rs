//! Session tests of delivery to the device: rule 3 (replay from
//! `last_seq` on connect), rule 5 (the inflight window and cumulative ACK),
//! rule 6 (retransmission with a doubling timeout), and the regressions
//! found in them.

use super::*;

// ---------------------------------------------------------------------------
// Rule 3: replay on connect
// ---------------------------------------------------------------------------

#[test]
fn replay_from_zero_is_flagged_then_live_messages_are_not() {
    let lim = SessionLimits { inflight_window: 16, ..limits() };
    let mut h = H::with(lim, 0);
    h.inbox = FakeInbox::with_head(5);
    let c = h.open(0);
    assert_eq!((c.oldest_seq, c.head_seq), (1, 5));
    assert_eq!(h.fill(), 5);
    assert_eq!(pushes(&h.take()), redelivered(1..=5));

    h.inbox.append();
    assert_eq!(h.fill(), 1);
    assert_eq!(pushes(&h.take()), fresh([6]));
    assert_eq!(h.s.sent(), 6);
    assert_eq!(h.s.acked(), 0);
}

#[test]
fn replay_starts_after_last_seq() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(5);
    h.open(3);
    assert_eq!(h.s.acked(), 3, "the device's cursor is its last_seq");
    assert_eq!(h.fill(), 2);
    assert_eq!(pushes(&h.take()), redelivered([4, 5]));
}

#[test]
fn up_to_date_device_gets_only_live_messages() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(5);
    h.open(5);
    assert_eq!(h.fill(), 0);
    h.inbox.append();
    h.fill();
    assert_eq!(pushes(&h.take()), fresh([6]));
}

#[test]
fn last_seq_beyond_head_is_clamped_so_new_messages_still_arrive() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(5);
    let c = h.open(50);
    assert_eq!((c.oldest_seq, c.head_seq), (1, 5));
    assert_eq!(h.s.acked(), 5);
    assert_eq!(h.s.sent(), 5);
    assert_eq!(h.fill(), 0);
    assert!(h.take().is_empty());

    h.inbox.append();
    assert_eq!(h.fill(), 1);
    assert_eq!(pushes(&h.take()), fresh([6]));
}

#[test]
fn last_seq_below_retention_starts_at_oldest() {
    let lim = SessionLimits { inflight_window: 16, ..limits() };
    let mut h = H::with(lim, 0);
    h.inbox = FakeInbox::with_head(10);
    h.inbox.retain_from(6);
    let c = h.open(2);
    assert_eq!((c.oldest_seq, c.head_seq), (6, 10));
    assert!(2 + 1 < c.oldest_seq, "the device can tell it lost 3..5");
    assert_eq!(h.fill(), 5);
    assert_eq!(pushes(&h.take()), redelivered(6..=10));
}

#[test]
fn nothing_retained_means_nothing_replayed() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(10);
    h.inbox.retain_from(11);
    let c = h.open(0);
    assert_eq!((c.oldest_seq, c.head_seq), (11, 10));
    assert_eq!(h.fill(), 0);
    h.inbox.append();
    h.fill();
    assert_eq!(pushes(&h.take()), fresh([11]));
}

#[test]
fn replay_is_followed_seamlessly_by_live_messages_through_the_window() {
    // Window 4, 6 retained and 2 live: replays and live ones come out in
    // one seq-ordered stream as acks open the window; only seqs <= the
    // head at connect time are flagged.
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(6);
    h.open(0);
    h.fill();
    assert_eq!(pushes(&h.take()), redelivered(1..=4));
    h.inbox.append();
    h.inbox.append();
    h.send(&Frame::PushAck { seq: 4 });
    assert_eq!(h.poll(), Event::Acked);
    h.fill();
    let mut want = redelivered([5, 6]);
    want.extend(fresh([7, 8]));
    assert_eq!(pushes(&h.take()), want);
}

#[test]
fn retention_during_delivery_skips_entries_never_sent() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(4);
    h.open(0);
    h.fill();
    assert_eq!(pushes(&h.take()), redelivered(1..=4));
    h.send(&Frame::PushAck { seq: 4 });
    assert_eq!(h.poll(), Event::Acked);
    for _ in 0..6 {
        h.inbox.append();
    }
    h.inbox.retain_from(8); // 5..7 dropped before this device got them
    assert_eq!(h.fill(), 3);
    assert_eq!(pushes(&h.take()), fresh([8, 9, 10]));
    assert_eq!(h.s.acked(), 7);
    assert_eq!(h.s.inflight(), 3);
}

// ---------------------------------------------------------------------------
// Rule 5: inflight window and cumulative ACK
// ---------------------------------------------------------------------------

#[test]
fn window_limits_pushes_and_acks_reopen_it() {
    let mut h = H::new(); // window 4
    h.inbox = FakeInbox::with_head(10);
    h.open(10); // nothing to replay...
    for _ in 0..10 {
        h.inbox.append(); // ...10 live ones: 11..20
    }
    assert_eq!(h.fill(), 4);
    assert_eq!(pushes(&h.take()), fresh(11..=14));
    assert_eq!(h.s.inflight(), 4);
    assert_eq!(h.fill(), 0, "window full");
    assert!(h.take().is_empty());

    h.send(&Frame::PushAck { seq: 12 });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!(h.s.acked(), 12);
    assert_eq!(h.fill(), 2);
    assert_eq!(pushes(&h.take()), fresh([15, 16]));
    assert_eq!(h.s.inflight(), 4);
}

#[test]
fn window_of_four_with_head_ten_then_cumulative_ack() {
    let mut h = H::new(); // window 4
    h.inbox = FakeInbox::with_head(10);
    h.open(0);
    assert_eq!(h.fill(), 4);
    assert_eq!(pushes(&h.take()), redelivered(1..=4));

    h.send(&Frame::PushAck { seq: 2 });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!(h.fill(), 2);
    assert_eq!(pushes(&h.take()), redelivered([5, 6]));

    // Stale: lower than (or equal to) what is acked changes nothing.
    for stale in [0, 1, 2] {
        h.send(&Frame::PushAck { seq: stale });
        assert_eq!(h.poll(), Event::Handled, "PUSHACK({stale})");
        assert_eq!(h.s.acked(), 2);
        assert!(h.take().is_empty());
    }

    h.send(&Frame::PushAck { seq: 6 });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!(h.fill(), 4);
    assert_eq!(pushes(&h.take()), redelivered(7..=10));

    h.send(&Frame::PushAck { seq: 10 });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!((h.s.acked(), h.s.sent(), h.s.inflight()), (10, 10, 0));
    assert_eq!(h.fill(), 0);
    // Nothing unacked: no ack timer, only the idle deadline.
    assert_eq!(h.s.next_deadline(), Some(IDLE_30S_MS));
}

#[test]
fn ack_beyond_what_was_sent_is_clamped() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(10);
    h.open(0);
    h.fill(); // 1..4
    h.take();
    h.send(&Frame::PushAck { seq: 1_000 });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!(h.s.acked(), 4, "cannot have acked what was never sent");
    assert_eq!(h.fill(), 4);
    assert_eq!(pushes(&h.take()), redelivered(5..=8), "5..8 are not skipped");

    h.send(&Frame::PushAck { seq: u64::MAX });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!(h.s.acked(), 8);
}

#[test]
fn ack_with_nothing_sent_is_ignored() {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(3);
    h.open(3);
    h.send(&Frame::PushAck { seq: 9 });
    assert_eq!(h.poll(), Event::Handled);
    assert_eq!(h.s.acked(), 3);
}

#[test]
fn window_of_zero_behaves_as_one() {
    let lim = SessionLimits { inflight_window: 0, ..limits() };
    let mut h = H::with(lim, 0);
    h.inbox = FakeInbox::with_head(3);
    h.open(0);
    assert_eq!(h.fill(), 1);
}

// ---------------------------------------------------------------------------
// Rule 6: retransmission
// ---------------------------------------------------------------------------

#[test]
fn retransmits_with_doubling_timeout_then_ack_timeout() {
    let mut h = three_in_flight();
    assert_eq!(h.s.next_deadline(), Some(100));

    h.timeout(99);
    assert!(h.take().is_empty());
    assert_eq!(h.s.next_deadline(), Some(100));

    h.timeout(100);
    assert_eq!(pushes(&h.take()), redelivered(4..=6), "everything unacked, same seqs, flagged");
    assert_eq!(h.s.next_deadline(), Some(300));

    h.timeout(299);
    assert!(h.take().is_empty());
    h.timeout(300);
    assert_eq!(pushes(&h.take()), redelivered(4..=6));
    assert_eq!(h.s.next_deadline(), Some(700));

    h.timeout(699);
    assert!(h.take().is_empty());
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout(700);
    assert_disconnect(&h.take(), DisconnectReason::AckTimeout);
    assert_eq!(h.s.phase(), Phase::Closing);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::AckTimeout));
    assert_eq!(h.s.next_deadline(), Some(700 + CLOSE_LINGER_MS));
    h.timeout(700 + CLOSE_LINGER_MS);
    assert_eq!(h.s.phase(), Phase::Finished);
}

#[test]
fn max_retries_zero_closes_at_the_first_deadline() {
    let lim = SessionLimits { max_retries: 0, ..limits() };
    let mut h = H::with(lim, 0);
    h.inbox = FakeInbox::with_head(1);
    h.open(0);
    h.fill();
    h.take();
    h.timeout(100);
    assert_disconnect(&h.take(), DisconnectReason::AckTimeout);
}

#[test]
fn late_timer_retransmits_relative_to_when_it_fired() {
    let mut h = three_in_flight();
    h.timeout(150); // the wheel fired late
    assert_eq!(pushes(&h.take()), redelivered(4..=6));
    assert_eq!(h.s.next_deadline(), Some(350));
}

#[test]
fn pushes_behind_the_oldest_unacked_do_not_move_the_ack_deadline() {
    let mut h = three_in_flight();
    h.now = 50;
    h.inbox.append();
    assert_eq!(h.fill(), 1);
    assert_eq!(pushes(&h.take()), fresh([7]));
    assert_eq!(h.s.next_deadline(), Some(100), "the oldest unacked PUSH was sent at 0");
    h.timeout(100);
    assert_eq!(pushes(&h.take()), redelivered(4..=7));
}

#[test]
fn partial_ack_resets_retry_count_and_timeout() {
    let mut h = three_in_flight();
    h.timeout(100); // retry 1, next at 300
    assert_eq!(pushes(&h.take()), redelivered(4..=6));

    h.now = 150;
    h.send(&Frame::PushAck { seq: 4 });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!(h.s.next_deadline(), Some(250), "fresh ack_timeout from the ack");

    h.timeout(249);
    assert!(h.take().is_empty());
    h.timeout(250);
    assert_eq!(pushes(&h.take()), redelivered([5, 6]), "only what is still unacked");
    // Retry count restarted: this was retry 1 again (200 ms), not retry 2.
    assert_eq!(h.s.next_deadline(), Some(450));
    h.timeout(450);
    assert_eq!(pushes(&h.take()), redelivered([5, 6]));
    assert_eq!(h.s.next_deadline(), Some(850));
    h.timeout(850);
    assert_disconnect(&h.take(), DisconnectReason::AckTimeout);
}

#[test]
fn full_ack_cancels_retransmission() {
    let mut h = three_in_flight();
    h.timeout(100);
    h.take();
    h.now = 120;
    h.send(&Frame::PushAck { seq: 6 });
    assert_eq!(h.poll(), Event::Acked);
    assert_eq!(h.s.next_deadline(), Some(120 + IDLE_30S_MS));
    for t in [300, 700, 1_500] {
        h.timeout(t);
        assert!(h.take().is_empty(), "nothing due at {t}");
        assert_eq!(h.s.phase(), Phase::Open);
    }
    // A new push starts a new ack timer from scratch.
    h.now = 2_000;
    h.inbox.append();
    h.fill();
    assert_eq!(pushes(&h.take()), fresh([7]));
    assert_eq!(h.s.next_deadline(), Some(2_100));
}

#[test]
fn stale_ack_does_not_reset_the_retry_state() {
    let mut h = three_in_flight();
    h.timeout(100); // next at 300
    h.take();
    h.now = 200;
    h.send(&Frame::PushAck { seq: 3 });
    assert_eq!(h.poll(), Event::Handled);
    assert_eq!(h.s.next_deadline(), Some(300));
}

#[test]
fn write_blocked_at_the_ack_deadline_is_a_slow_consumer() {
    let mut h = three_in_flight();
    h.timeout_blocked(99); // nothing due yet: blocked alone is not a fault
    assert!(h.take().is_empty());
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout_blocked(100);
    assert_disconnect(&h.take(), DisconnectReason::SlowConsumer);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::SlowConsumer));
    assert_eq!(h.s.phase(), Phase::Closing);
}

#[test]
fn write_blocked_at_a_later_retry_is_a_slow_consumer() {
    let mut h = three_in_flight();
    h.timeout(100);
    h.take();
    h.timeout_blocked(300);
    assert_disconnect(&h.take(), DisconnectReason::SlowConsumer);
}

#[test]
fn retransmission_skips_entries_retention_dropped_meanwhile() {
    let mut h = three_in_flight(); // 4..6 in flight
    h.inbox.retain_from(5);
    h.timeout(100);
    assert_eq!(pushes(&h.take()), redelivered([5, 6]));
}

// ---------------------------------------------------------------------------
// Regression tests for bugs found by the tests above (fixed in session.rs).
// ---------------------------------------------------------------------------

/// Rule 6: "When the oldest unacknowledged PUSH has waited ack_timeout...".
/// When `fill` skips entries retention dropped, it advances `acked` past
/// what was in flight but keeps the old ack deadline and retry count, so
/// PUSHes sent moments ago inherit the exhausted retries of gone entries.
#[test]
fn retention_skip_restarts_the_ack_timer_for_the_new_oldest_unacked() {
    let mut h = three_in_flight(); // 4..6 sent at 0
    h.timeout(100);
    h.timeout(300); // retry 2 of 2 spent on 4..6; next deadline 700
    h.take();
    h.now = 650;
    for _ in 0..6 {
        h.inbox.append(); // 7..12
    }
    h.inbox.retain_from(10); // 4..9 dropped: 4..6 in flight, 7..9 never sent
    assert_eq!(h.fill(), 3);
    assert_eq!(pushes(&h.take()), fresh(10..=12));
    assert_eq!(h.s.acked(), 9, "the session counts 4..9 as settled");
    // 10 (the oldest unacked) was pushed at 650: not due before 750.
    h.timeout(700);
    assert!(h.take().is_empty(), "DISCONNECT 4 for a PUSH that waited 50 of 100 ms");
    assert_eq!(h.s.phase(), Phase::Open);
    h.timeout(750);
    assert_eq!(pushes(&h.take()), redelivered(10..=12));
}

/// Same root cause, worse symptom: when retention dropped everything in
/// flight and nothing is left to send, `inflight()` is 0 yet the ack timer
/// keeps running, "retransmits" nothing, and ends in DISCONNECT(4).
#[test]
fn retention_skip_with_nothing_left_in_flight_stops_the_ack_timer() {
    let mut h = three_in_flight(); // 4..6 sent at 0
    h.now = 50;
    h.inbox.append(); // 7
    h.inbox.retain_from(8); // nothing retained
    assert_eq!(h.fill(), 0);
    assert_eq!(h.s.inflight(), 0);
    assert_eq!(h.s.next_deadline(), Some(IDLE_30S_MS), "no ack timer with nothing in flight");
    for t in [100, 300, 700] {
        h.timeout(t);
        assert!(h.take().is_empty(), "wrote something at {t} with nothing in flight");
        assert_eq!(h.s.phase(), Phase::Open);
    }
}

/// `retries` is a `u8` compared against a `u32` `max_retries`: a
/// configuration with `max_retries >= 256` overflows it (a panic in debug
/// builds, a wrap to 0 and endless retransmission in release) instead of
/// closing with DISCONNECT(4). Nothing in the session rejects such a limit.
#[test]
fn max_retries_above_255_still_ends_in_ack_timeout() {
    let lim = SessionLimits { ack_timeout_ms: 1, max_retries: 300, ..limits() };
    let mut h = H::with(lim, 0);
    h.inbox = FakeInbox::with_head(1);
    h.open(0);
    h.fill();
    h.take();
    let mut resends = 0;
    for _ in 0..400 {
        let Some(d) = h.s.next_deadline() else { break };
        // Stay clear of the idle timeout: the device keeps pinging.
        h.now = d;
        h.send(&Frame::Ping { nonce: 0 });
        h.poll();
        h.timeout(d);
        let frames = h.take();
        resends += pushes(&frames).len();
        if h.s.phase() != Phase::Open {
            assert!(frames.iter().any(|f| matches!(f, Frame::Disconnect { reason: 4, .. })), "{frames:?}");
            break;
        }
    }
    assert_eq!(resends, 300);
    assert_eq!(h.s.close_reason(), Some(DisconnectReason::AckTimeout));
}
