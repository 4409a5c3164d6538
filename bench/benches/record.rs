//! TLS record layer micro-benchmarks: sealing one small flush with `ringgate::runtime::tls_record`, with the expanded key cached (a busy connection), evicted (more active connections than cache slots) and, as the baseline the cache replaced, the key schedule expanded on every flush.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringgate::runtime::tls_record::{Record13, Secret, TrafficSecrets, KEY_CACHE_SLOTS};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;

/// One PUSH of a 64 B payload plus its frame header, as the push bench sends.
const FLUSH: usize = 100;

fn secrets(k: u8) -> ConnectionTrafficSecrets {
    ConnectionTrafficSecrets::Aes128Gcm { key: AeadKey::from([k; 32]), iv: Iv::copy(&[k; 12]) }
}

fn record(k: u8) -> Record13 {
    // Made-up traffic secrets: only a KeyUpdate would derive keys from them.
    let traffic = TrafficSecrets { client: Secret::from_bytes(&[k; 32]), server: Secret::from_bytes(&[k; 32]) };
    Record13::new(rustls::ExtractedSecrets { tx: (0, secrets(k)), rx: (0, secrets(k)) }, &traffic).unwrap()
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("record/seal_100B");
    let mut wire = BytesMut::with_capacity(4096);
    let mut r = record(1);
    g.bench_function("cached_key", |b| {
        b.iter(|| {
            wire.clear();
            let mut plain = BytesMut::from(&[7u8; FLUSH][..]);
            // Past `tls.key_update_after_records` a KeyUpdate goes out (once per ~8 M flushes).
            if r.seal_all(&mut plain, &mut wire).is_err() {
                r = record(1);
            }
            black_box(&wire);
        })
    });
    // Twice as many connections as slots, flushed round-robin: every flush misses.
    let mut many: Vec<Record13> = (0..2 * KEY_CACHE_SLOTS).map(|i| record(i as u8)).collect();
    let mut i = 0;
    g.bench_function("evicted_key", |b| {
        b.iter(|| {
            wire.clear();
            let mut plain = BytesMut::from(&[7u8; FLUSH][..]);
            let n = many.len();
            if many[i % n].seal_all(&mut plain, &mut wire).is_err() {
                many[i % n] = record(2);
            }
            i += 1;
            black_box(&wire);
        })
    });
    // What seal_all did before the cache: bind the raw key, then seal.
    let key = [1u8; 16];
    let mut seq = 0u64;
    g.bench_function("expand_every_flush", |b| {
        b.iter(|| {
            let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, black_box(&key)).unwrap());
            let mut n = [1u8; 12];
            for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
                *b ^= s;
            }
            seq += 1;
            let mut body = vec![7u8; FLUSH + 1];
            let tag = k.seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from([0x17u8, 3, 3, 0, 117]), &mut body).unwrap();
            black_box(&body);
            black_box(tag.as_ref()[0]);
        })
    });
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
