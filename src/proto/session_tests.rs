//! Deterministic virtual-time tests of every session rule (PROTOCOL.md 1-9) that lives in the session.
//!
//! Time is a `u64` of milliseconds the test advances by hand; there is no
//! clock, socket or sleep anywhere. The harness plays both the device (it
//! encodes client frames into the session's read buffer and decodes what the
//! session writes) and the server (a fake inbox whose `oldest`/`head` the
//! test moves to simulate appends and retention, plus `accept`/`fill` calls
//! in the order the runtime makes them).

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::error::{connack, DisconnectReason};
use super::frame::{self, ConnAck, Connect, Frame, Push, SendAck, Utf8Bytes, FLAG_REDELIVERY};
use super::session::{
    ConnectRequest, EntryRef, Event, InboxRead, Phase, Session, SessionLimits, CLOSE_LINGER_MS, MAX_DEVICE_ID, MAX_PREAUTH_FRAME,
    MAX_TOKEN,
};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Wall clock handed to `accept` for CONNACK `server_time_ms`; deliberately
/// unlike any monotonic `now` so a mix-up between the two shows.
const WALL_MS: u64 = 1_700_000_000_000;

struct Entry {
    msg_id: u64,
    timestamp_ms: u64,
    from: String,
    payload: Vec<u8>,
}

/// Deterministic content of inbox entry `seq`, so a PUSH can be checked
/// against the entry it claims to carry.
fn entry_for(seq: u64) -> Entry {
    Entry {
        msg_id: 1_000 + seq,
        timestamp_ms: 10 * seq,
        from: format!("sender{seq}"),
        payload: format!("message {seq}").into_bytes(),
    }
}

/// One user's inbox: `entries[i]` is seq `i + 1`; seqs below `oldest` are
/// "dropped by retention" (kept in the Vec, hidden from `get`).
struct FakeInbox {
    oldest: u64,
    entries: Vec<Entry>,
}

impl FakeInbox {
    fn with_head(head: u64) -> Self {
        FakeInbox { oldest: 1, entries: (1..=head).map(entry_for).collect() }
    }

    fn head(&self) -> u64 {
        self.entries.len() as u64
    }

    fn append(&mut self) -> u64 {
        let seq = self.head() + 1;
        self.entries.push(entry_for(seq));
        seq
    }

    /// Retention: everything below `oldest` is gone (`oldest = head + 1`: nothing retained).
    fn retain_from(&mut self, oldest: u64) {
        assert!(oldest >= self.oldest && oldest <= self.head() + 1, "test bug: bad retention");
        self.oldest = oldest;
    }
}

impl InboxRead for FakeInbox {
    fn bounds(&self) -> (u64, u64) {
        (self.oldest, self.head())
    }

    fn get(&self, seq: u64) -> Option<EntryRef<'_>> {
        if seq == 0 || seq < self.oldest || seq > self.head() {
            return None;
        }
        let e = &self.entries[(seq - 1) as usize];
        Some(EntryRef { msg_id: e.msg_id, timestamp_ms: e.timestamp_ms, from: &e.from, payload: bytes::Bytes::copy_from_slice(&e.payload) })
    }
}

/// Limits small enough that every timer fires within a few hundred virtual ms.
fn limits() -> SessionLimits {
    SessionLimits {
        heartbeat_s: 30,
        handshake_timeout_ms: 10_000,
        ack_timeout_ms: 100,
        max_retries: 2,
        inflight_window: 4,
        max_frame: 65_536,
    }
}

const IDLE_30S_MS: u64 = 75_000; // 2.5 x 30 s

struct H {
    lim: SessionLimits,
    s: Session,
    now: u64,
    rbuf: BytesMut,
    out: BytesMut,
    inbox: FakeInbox,
}

impl H {
    fn new() -> Self {
        Self::with(limits(), 0)
    }

    fn with(lim: SessionLimits, now: u64) -> Self {
        H { s: Session::new(now, &lim), lim, now, rbuf: BytesMut::new(), out: BytesMut::new(), inbox: FakeInbox::with_head(0) }
    }

    fn send(&mut self, f: &Frame) {
        f.encode(&mut self.rbuf);
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.rbuf.extend_from_slice(b);
    }

    fn poll(&mut self) -> Event {
        self.s.poll_frame(self.now, &self.lim, &mut self.rbuf, &mut self.out)
    }

    fn timeout(&mut self, t: u64) {
        self.now = t;
        self.s.on_timeout(t, &self.lim, &self.inbox, false, &mut self.out);
    }

    fn timeout_blocked(&mut self, t: u64) {
        self.now = t;
        self.s.on_timeout(t, &self.lim, &self.inbox, true, &mut self.out);
    }

    fn fill(&mut self) -> usize {
        self.s.fill(self.now, &self.lim, &self.inbox, &mut self.out)
    }

    /// Every frame the session wrote since the last call, decoded.
    fn take(&mut self) -> Vec<Frame> {
        decode_all(&mut self.out)
    }

    /// CONNECT + accept (no token expiry); returns the CONNACK.
    fn open(&mut self, last_seq: u64) -> ConnAck {
        self.open_with(0, last_seq, 0)
    }

    fn open_with(&mut self, keepalive_s: u16, last_seq: u64, token_exp_ms: u64) -> ConnAck {
        self.send(&connect(1, keepalive_s, "phone", "tok", last_seq));
        let req = match self.poll() {
            Event::Connect(r) => r,
            other => panic!("expected Event::Connect, got {other:?}"),
        };
        assert_eq!(self.s.phase(), Phase::Authenticating);
        let bounds = self.inbox.bounds();
        self.s.accept(self.now, WALL_MS, &self.lim, "alice", &req, bounds, token_exp_ms, &mut self.out);
        assert_eq!(self.s.phase(), Phase::Open);
        match self.take().as_slice() {
            [Frame::ConnAck(c)] => c.clone(),
            other => panic!("expected one CONNACK, got {other:?}"),
        }
    }
}

fn connect(version: u8, keepalive_s: u16, device_id: &str, token: &str, last_seq: u64) -> Frame {
    Frame::Connect(Connect {
        version,
        keepalive_s,
        device_id: Utf8Bytes::from(device_id),
        token: Utf8Bytes::from(token),
        last_seq,
    })
}

/// Decodes everything in `out`; the session must only ever write whole, valid frames.
fn decode_all(out: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match frame::decode(out, u32::MAX) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => panic!("session wrote an undecodable frame: {e}"),
        }
    }
    assert!(out.is_empty(), "session wrote a partial frame: {} bytes left", out.len());
    frames
}

/// `(seq, flags)` of every PUSH, in order; also checks each PUSH carries its entry.
fn pushes(frames: &[Frame]) -> Vec<(u64, u8)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Push(p) => {
                assert_push_matches_entry(p);
                Some((p.seq, p.flags))
            }
            _ => None,
        })
        .collect()
}

fn assert_push_matches_entry(p: &Push) {
    let e = entry_for(p.seq);
    assert_eq!(p.msg_id, e.msg_id, "PUSH {} msg_id", p.seq);
    assert_eq!(p.timestamp_ms, e.timestamp_ms, "PUSH {} timestamp", p.seq);
    assert_eq!(p.from.as_str(), e.from, "PUSH {} from", p.seq);
    assert_eq!(&p.payload[..], &e.payload[..], "PUSH {} payload", p.seq);
}

fn fresh(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, u8)> {
    seqs.into_iter().map(|s| (s, 0)).collect()
}

fn redelivered(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, u8)> {
    seqs.into_iter().map(|s| (s, FLAG_REDELIVERY)).collect()
}

/// Asserts `frames` is exactly one DISCONNECT with `reason`.
fn assert_disconnect(frames: &[Frame], reason: DisconnectReason) {
    match frames {
        [Frame::Disconnect { reason: r, .. }] => assert_eq!(*r, reason.code(), "DISCONNECT reason in {frames:?}"),
        other => panic!("expected one DISCONNECT({}), got {other:?}", reason.code()),
    }
}

fn assert_refused(frames: &[Frame], status: u8) {
    match frames {
        [Frame::ConnAck(c)] => assert_eq!(c.status, status, "CONNACK status in {c:?}"),
        other => panic!("expected one CONNACK({status}), got {other:?}"),
    }
}

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

/// Open at t=0 with head 3 and everything pushed (ack timeout 100, max_retries 2).
fn three_in_flight() -> H {
    let mut h = H::new();
    h.inbox = FakeInbox::with_head(3);
    h.open(3);
    for _ in 0..3 {
        h.inbox.append();
    }
    assert_eq!(h.fill(), 3);
    assert_eq!(pushes(&h.take()), fresh(4..=6));
    h
}

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

fn raw_frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + body.len());
    b.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
    b.push(ty);
    b.extend_from_slice(body);
    b
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

// ---------------------------------------------------------------------------
// Rule 4: SEND is handed out with its payload as a slice of the read buffer
// ---------------------------------------------------------------------------

#[test]
fn send_is_handed_out_with_its_fields() {
    let mut h = H::new();
    h.open(0);
    h.send(&Frame::Send(frame::Send {
        client_msg_id: 99,
        target_kind: 2,
        target: "team-7".into(),
        payload: bytes::Bytes::from_static(b"hello group"),
    }));
    let base = h.rbuf.as_ptr() as usize;
    let end = base + h.rbuf.len();
    match h.poll() {
        Event::Send(s) => {
            assert_eq!(s.client_msg_id, 99);
            assert_eq!(s.target_kind, 2);
            assert_eq!(s.target.as_str(), "team-7");
            assert_eq!(&s.payload[..], b"hello group");
            let p = s.payload.as_ptr() as usize;
            assert!(p >= base && p + s.payload.len() <= end, "payload was copied out of the read buffer");
        }
        other => panic!("expected Send, got {other:?}"),
    }
    assert!(h.take().is_empty(), "the SENDACK is the server's to write");
    assert!(h.rbuf.is_empty());
}

#[test]
fn send_with_empty_payload_and_unknown_target_kind_reaches_the_server() {
    // The target kind is the router's business (SENDACK 1), not a framing error.
    let mut h = H::new();
    h.open(0);
    h.send(&Frame::Send(frame::Send {
        client_msg_id: 1,
        target_kind: 9,
        target: "".into(),
        payload: bytes::Bytes::new(),
    }));
    match h.poll() {
        Event::Send(s) => {
            assert_eq!(s.target_kind, 9);
            assert!(s.payload.is_empty());
        }
        other => panic!("expected Send, got {other:?}"),
    }
}

#[test]
fn send_refreshes_the_idle_deadline() {
    let mut h = H::new();
    h.open(0);
    h.now = 70_000;
    h.send(&Frame::Send(frame::Send {
        client_msg_id: 1,
        target_kind: 1,
        target: "bob".into(),
        payload: bytes::Bytes::new(),
    }));
    assert!(matches!(h.poll(), Event::Send(_)));
    assert_eq!(h.s.next_deadline(), Some(70_000 + IDLE_30S_MS));
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
