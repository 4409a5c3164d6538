//! Deterministic virtual-time tests of every session rule (PROTOCOL.md 1-9) that lives in the session.
//!
//! Time is a `u64` of milliseconds the test advances by hand; there is no
//! clock, socket or sleep anywhere. The harness plays both the device (it
//! encodes client frames into the session's read buffer and decodes what the
//! session writes) and the server (a fake inbox whose `oldest`/`head` the
//! test moves to simulate appends and retention, plus `accept`/`fill` calls
//! in the order the runtime makes them).
//!
//! This file is the harness; the tests are grouped by rule in the files
//! beside it (`connect`, `delivery`, `liveness`, `send`, `properties`).

use bytes::{BufMut, BytesMut};

use super::error::{connack, DisconnectReason};
use super::frame::{self, ConnAck, Connect, Frame, Push, SendAck, Utf8Bytes, FLAG_REDELIVERY};
use super::session::{
    ConnectRequest, EntryRef, Event, InboxRead, Phase, Session, SessionLimits, CLOSE_LINGER_MS, MAX_DEVICE_ID, MAX_PREAUTH_FRAME,
    MAX_TOKEN,
};

mod connect;
mod delivery;
mod liveness;
mod properties;
mod send;

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

/// A frame of type `ty` with `body`, built by hand (for malformed input).
fn raw_frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + body.len());
    b.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
    b.push(ty);
    b.extend_from_slice(body);
    b
}
