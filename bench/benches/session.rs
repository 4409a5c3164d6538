//! Session micro-benchmarks: the per-message work of `ringgate::proto::session::Session` (fill a PUSH, take its PUSHACK, decode a SEND), no I/O.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringgate::proto::frame::{Connect, Frame, Send, Utf8Bytes};
use ringgate::proto::session::{EntryRef, Event, InboxRead, Session, SessionLimits};

/// An inbox of `head` identical 64-byte entries, all retained.
struct Inbox {
    head: u64,
    payload: Bytes,
}

impl InboxRead for Inbox {
    fn bounds(&self) -> (u64, u64) {
        (1, self.head)
    }
    fn get(&self, seq: u64) -> Option<EntryRef<'_>> {
        (seq >= 1 && seq <= self.head).then(|| EntryRef {
            msg_id: seq,
            timestamp_ms: 1_795_000_000_000,
            from: "sender-user-42",
            payload: self.payload.clone(),
        })
    }
}

/// A session past CONNECT/CONNACK, as the runtime leaves it.
fn open_session(lim: &SessionLimits) -> Session {
    let mut s = Session::new(0, lim);
    let mut rbuf = BytesMut::new();
    let mut out = BytesMut::new();
    Frame::Connect(Connect {
        version: 1,
        keepalive_s: 0,
        device_id: Utf8Bytes::from("phone"),
        token: Utf8Bytes::from("token"),
        last_seq: 0,
    })
    .encode(&mut rbuf);
    let Event::Connect(req) = s.poll_frame(0, lim, &mut rbuf, &mut out) else { panic!("no CONNECT event") };
    s.accept(0, 0, lim, "alice", &req, (1, 0), 0, &mut out);
    s
}

fn push_ack(c: &mut Criterion) {
    let lim = SessionLimits::default();
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    // One message through the session: it is appended (head moves), `fill`
    // writes its PUSH, and the device's PUSHACK for it is decoded and handled.
    g.bench_function("push+ack_per_message", |b| {
        let mut s = open_session(&lim);
        let mut inbox = Inbox { head: 0, payload: Bytes::from(vec![b'x'; 64]) };
        let mut out = BytesMut::with_capacity(1 << 16);
        let mut rbuf = BytesMut::with_capacity(64);
        let mut now = 0u64;
        b.iter(|| {
            now += 1;
            inbox.head += 1;
            out.clear();
            let n = s.fill(now, &lim, &inbox, &mut out);
            debug_assert_eq!(n, 1);
            Frame::PushAck { seq: inbox.head }.encode(&mut rbuf);
            black_box(s.poll_frame(now, &lim, &mut rbuf, &mut out));
        })
    });
    // A full window filled at once, then one cumulative ACK: the batched path.
    let window = lim.inflight_window as u64;
    g.throughput(Throughput::Elements(window));
    g.bench_function("push_window_then_one_ack", |b| {
        let mut s = open_session(&lim);
        let mut inbox = Inbox { head: 0, payload: Bytes::from(vec![b'x'; 64]) };
        let mut out = BytesMut::with_capacity(1 << 16);
        let mut rbuf = BytesMut::with_capacity(64);
        let mut now = 0u64;
        b.iter(|| {
            now += 1;
            inbox.head += window;
            out.clear();
            black_box(s.fill(now, &lim, &inbox, &mut out));
            Frame::PushAck { seq: inbox.head }.encode(&mut rbuf);
            black_box(s.poll_frame(now, &lim, &mut rbuf, &mut out));
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("send_decode_to_event", |b| {
        let mut s = open_session(&lim);
        let mut one = BytesMut::new();
        Frame::Send(Send {
            client_msg_id: 1,
            target_kind: 1,
            target: Utf8Bytes::from("receiver-user-17"),
            payload: Bytes::from(vec![b'y'; 64]),
        })
        .encode(&mut one);
        let mut out = BytesMut::new();
        b.iter_batched(
            || one.clone(),
            |mut rbuf| black_box(s.poll_frame(1, &lim, &mut rbuf, &mut out)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, push_ack);
criterion_main!(benches);
