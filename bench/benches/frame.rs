//! Frame codec micro-benchmarks: decoding and encoding the hot frames (PUSH, SEND, PUSHACK) with `ringgate::proto::frame`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringgate::proto::frame::{self, Frame, Send, Utf8Bytes};

/// Frames per decode batch: one read buffer holding this many frames, as
/// a busy connection's read returns several at once.
const BATCH: usize = 1_000;

fn buffer_of(f: &Frame, n: usize) -> BytesMut {
    let mut b = BytesMut::new();
    for _ in 0..n {
        f.encode(&mut b);
    }
    b
}

fn push(payload: usize) -> Frame {
    Frame::Push(frame::Push {
        seq: 123_456,
        msg_id: 987_654_321,
        timestamp_ms: 1_795_000_000_000,
        from: Utf8Bytes::from("sender-user-42"),
        flags: 0,
        payload: Bytes::from(vec![b'x'; payload]),
    })
}

fn send(payload: usize) -> Frame {
    Frame::Send(Send {
        client_msg_id: 77,
        target_kind: 1,
        target: Utf8Bytes::from("receiver-user-17"),
        payload: Bytes::from(vec![b'y'; payload]),
    })
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, f) in [
        ("push_64B", push(64)),
        ("push_1KiB", push(1024)),
        ("send_64B", send(64)),
        ("pushack", Frame::PushAck { seq: 42 }),
    ] {
        let buf = buffer_of(&f, BATCH);
        g.bench_function(name, |b| {
            b.iter_batched(
                || buf.clone(),
                |mut buf| {
                    while let Ok(Some(f)) = frame::decode(&mut buf, 65_536) {
                        black_box(f);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/encode");
    g.throughput(Throughput::Elements(1));
    let payload = vec![b'x'; 64];
    let mut out = BytesMut::with_capacity(1 << 16);
    g.bench_function("push_64B_borrowed", |b| {
        b.iter(|| {
            if out.len() > 60_000 {
                out.clear();
            }
            frame::encode_push(&mut out, 123_456, 987_654_321, 1_795_000_000_000, "sender-user-42", 0, black_box(&payload));
        })
    });
    for (name, f) in [("send_64B", send(64)), ("pushack", Frame::PushAck { seq: 42 })] {
        g.bench_function(name, |b| {
            b.iter(|| {
                if out.len() > 60_000 {
                    out.clear();
                }
                black_box(&f).encode(&mut out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
