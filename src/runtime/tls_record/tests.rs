//! Tests of the record layer: round trips, tampering, alerts, record limits, the KeyUpdate schedule, and interoperation with rustls.

use super::*;

/// A connected (server, client) pair on AES-128-GCM whose keys come from
/// two made-up traffic secrets, so KeyUpdates work as on a real connection.
fn pair_limit(seed: u8, update_after: u64) -> (Record13, Record13) {
    let alg = Alg::Aes128Gcm;
    let cs = Secret::new(&[seed; 32]).unwrap();
    let ss = Secret::new(&[seed.wrapping_add(100); 32]).unwrap();
    let keys = |s: &Secret| {
        let d = Dir::from_traffic_secret(alg, s);
        ConnectionTrafficSecrets::Aes128Gcm { key: rustls::crypto::cipher::AeadKey::from(d.key), iv: rustls::crypto::cipher::Iv::copy(&d.iv) }
    };
    let traffic = TrafficSecrets { client: Some(cs.clone()), server: Some(ss.clone()) };
    let server = Record13::with_limit(rustls::ExtractedSecrets { tx: (0, keys(&ss)), rx: (0, keys(&cs)) }, &traffic, update_after, false).unwrap();
    let client = Record13::with_limit(rustls::ExtractedSecrets { tx: (0, keys(&cs)), rx: (0, keys(&ss)) }, &traffic, update_after, true).unwrap();
    (server, client)
}

fn pair_with(seed: u8) -> (Record13, Record13) {
    pair_limit(seed, DEFAULT_KEY_UPDATE_AFTER_RECORDS)
}

fn seal_open(a: &mut Record13, b: &mut Record13, msg: &[u8]) {
    let mut wire = BytesMut::new();
    a.seal_all(&mut BytesMut::from(msg), &mut wire).unwrap();
    let mut got = BytesMut::new();
    assert_eq!(b.open_all(&mut wire, &mut got), Ok(Opened::More));
    assert_eq!(&got[..], msg);
}

/// Seals an arbitrary inner plaintext (content, type, padding) as `r`'s
/// next record: what a peer that forges records would send.
fn seal_inner(r: &mut Record13, inner: &[u8]) -> BytesMut {
    let key = r.tx.bind(r.alg);
    let mut wire = BytesMut::new();
    let ct_len = inner.len() + TAG_LEN;
    wire.extend_from_slice(&[CT_APPDATA, 3, 3]);
    wire.extend_from_slice(&(ct_len as u16).to_be_bytes());
    wire.extend_from_slice(inner);
    let (hdr, body) = wire.split_at_mut(HEADER_LEN);
    let tag = key.seal_in_place_separate_tag(r.tx.nonce(), Aad::from(&hdr[..]), body).unwrap();
    wire.extend_from_slice(tag.as_ref());
    r.tx.seq += 1;
    wire
}

fn open_err(r: &mut Record13, mut wire: BytesMut) -> RecordError {
    r.open_all(&mut wire, &mut BytesMut::new()).unwrap_err()
}

/// Opens one record sealed by the peer and returns (inner type, content).
fn open_raw(r: &mut Record13, wire: &mut BytesMut) -> (u8, Vec<u8>) {
    let len = complete_record(wire, MAX_CIPHERTEXT).unwrap().expect("a whole record");
    let mut rec = wire.split_to(len);
    let (hdr, body) = rec.split_at_mut(HEADER_LEN);
    let key = r.rx.bind(r.alg);
    let pt = key.open_in_place(r.rx.nonce(), Aad::from(&hdr[..]), body).expect("peer record authenticates");
    r.rx.seq += 1;
    let end = pt.iter().rposition(|&b| b != 0).unwrap();
    (pt[end], pt[..end].to_vec())
}

/// Every idle TLS 1.3 connection keeps one boxed `Record13`: at 224
/// bytes it is served from mimalloc's 224-byte class; one byte more
/// and it takes a 256-byte block (`Dir` is packed for this).
#[test]
fn record_state_fits_its_size_class() {
    assert_eq!(std::mem::size_of::<Dir>(), 52);
    assert!(std::mem::size_of::<Record13>() <= 224, "{}", std::mem::size_of::<Record13>());
}

#[test]
fn round_trip_and_tamper() {
    let (mut a, mut b) = pair_with(1);
    let big = vec![0xabu8; 40_000];
    let mut plain = BytesMut::from(&big[..]);
    let mut wire = BytesMut::new();
    a.seal_all(&mut plain, &mut wire).unwrap();
    assert!(plain.is_empty());
    let mut wire2 = wire.clone();
    // Delivered in two pieces: the first part leaves a partial record.
    let mut got = BytesMut::new();
    let mut first = wire.split_to(20_000);
    assert_eq!(b.open_all(&mut first, &mut got), Ok(Opened::More));
    first.extend_from_slice(&wire);
    assert_eq!(b.open_all(&mut first, &mut got), Ok(Opened::More));
    assert!(first.is_empty());
    assert_eq!(&got[..], &big[..]);
    // A flipped bit fails authentication, and that is bad_record_mac.
    let (_, mut c) = pair_with(1);
    wire2[10] ^= 1;
    let e = open_err(&mut c, wire2);
    assert_eq!(e, RecordError::BadMac);
    assert_eq!(e.alert(), Some(AlertDescription::BadRecordMac));
}

#[test]
fn expanded_keys_are_reused_across_flushes() {
    let (mut a, mut b) = pair_with(1);
    seal_open(&mut a, &mut b, b"first");
    let (h0, m0) = KeyCache::stats();
    for i in 0..10u8 {
        seal_open(&mut a, &mut b, &[i; 100]);
    }
    let (h1, m1) = KeyCache::stats();
    // 10 seals + 10 opens, all hits: no key expansion after the first flush.
    assert_eq!((h1 - h0, m1 - m0), (20, 0));
}

#[test]
fn colliding_connections_evict_each_other_and_stay_correct() {
    let (mut a1, mut b1) = pair_with(2);
    let (mut a2, mut b2) = pair_with(3);
    // Force both senders (and both receivers) onto the same slot.
    a2.id = a1.id + KEY_CACHE_SLOTS as u64;
    b2.id = b1.id + KEY_CACHE_SLOTS as u64;
    let (_, m0) = KeyCache::stats();
    for i in 0..5u8 {
        seal_open(&mut a1, &mut b1, &[i; 33]);
        seal_open(&mut a2, &mut b2, &[i; 44]);
    }
    // Each flush found the other connection's keys in its slot.
    let (_, m1) = KeyCache::stats();
    assert_eq!(m1 - m0, 20);
}

#[test]
fn dropping_a_connection_frees_its_expanded_keys_and_idle_state_is_small() {
    let (mut a, mut b) = pair_with(4);
    seal_open(&mut a, &mut b, b"x");
    let (slot, id) = ((a.id as usize) & (KEY_CACHE_SLOTS - 1), a.id);
    assert!(KEYS.with(|c| c.borrow().slots[slot].as_ref().map(|s| s.id)) == Some(id));
    drop(a);
    assert!(KEYS.with(|c| c.borrow().slots[slot].is_none()));
    // What an idle connection keeps: raw keys, IVs, seqs, the two
    // traffic secrets KeyUpdate needs, an id (the bound is 3 KiB per
    // idle connection in all).
    assert!(std::mem::size_of::<Record13>() <= 256, "{}", std::mem::size_of::<Record13>());
}

#[test]
fn close_notify_is_seen_and_only_one_alert_is_ever_sealed() {
    let (mut a, mut b) = pair_with(5);
    let mut wire = BytesMut::new();
    assert!(a.close_notify(&mut wire));
    let len = wire.len();
    // A second close_notify, or an error alert after it, adds nothing.
    assert!(!a.close_notify(&mut wire));
    assert!(!a.error_alert(&RecordError::BadMac, &mut wire));
    assert_eq!(wire.len(), len);
    assert_eq!(b.open_all(&mut wire, &mut BytesMut::new()), Ok(Opened::CloseNotify));
    // And the other order: the error alert first, then no close_notify.
    let (mut a, mut b) = pair_with(6);
    let mut wire = BytesMut::new();
    assert!(a.error_alert(&RecordError::NoContentType, &mut wire));
    assert!(!a.close_notify(&mut wire));
    assert_eq!(open_raw(&mut b, &mut wire), (CT_ALERT, vec![LEVEL_FATAL, 10]));
    assert!(wire.is_empty());
    // The peer's own alert is answered with none.
    assert!(!a.error_alert(&RecordError::PeerAlert(40), &mut wire) && wire.is_empty());
}

#[test]
fn oversized_plaintext_and_change_cipher_spec_records_refused() {
    let (mut b, _) = pair_with(7);
    let e = open_err(&mut b, BytesMut::from(&[0x17, 3, 3, 0xff, 0xff][..]));
    assert_eq!((e.clone(), e.alert()), (RecordError::Overflow(0xffff), Some(AlertDescription::RecordOverflow)));
    // One byte over 2^14 + 256 is refused, 2^14 + 256 itself is read (and fails its tag).
    let mut rec = BytesMut::from(&[0x17, 3, 3][..]);
    rec.extend_from_slice(&((MAX_CIPHERTEXT + 1) as u16).to_be_bytes());
    assert_eq!(open_err(&mut b, rec), RecordError::Overflow(MAX_CIPHERTEXT + 1));
    let mut rec = BytesMut::from(&[0x17, 3, 3][..]);
    rec.extend_from_slice(&(MAX_CIPHERTEXT as u16).to_be_bytes());
    rec.extend_from_slice(&vec![0; MAX_CIPHERTEXT]);
    assert_eq!(open_err(&mut b, rec), RecordError::BadMac);
    // Plaintext handshake after the handshake; CCS after Finished: seen
    // from the header alone.
    let e = open_err(&mut b, BytesMut::from(&[0x16, 3, 3, 0, 40][..]));
    assert_eq!((e.clone(), e.alert()), (RecordError::UnexpectedType(0x16), Some(AlertDescription::UnexpectedMessage)));
    let e = open_err(&mut b, BytesMut::from(&[0x14, 3, 3, 0, 1, 1][..]));
    assert_eq!((e.clone(), e.alert()), (RecordError::ChangeCipherSpec, Some(AlertDescription::UnexpectedMessage)));
}

#[test]
fn inner_plaintext_over_two_to_the_fourteen_plus_one_is_record_overflow() {
    let (mut server, mut client) = pair_with(8);
    // Exactly 2^14 bytes of content and its type: the largest allowed.
    let mut inner = vec![b'x'; MAX_PLAINTEXT];
    inner.push(CT_APPDATA);
    let mut wire = seal_inner(&mut client, &inner);
    let mut got = BytesMut::new();
    assert_eq!(server.open_all(&mut wire, &mut got), Ok(Opened::More));
    assert_eq!(got.len(), MAX_PLAINTEXT);
    // One content byte more.
    let mut inner = vec![b'x'; MAX_PLAINTEXT + 1];
    inner.push(CT_APPDATA);
    let e = open_err(&mut server, seal_inner(&mut client, &inner));
    assert_eq!((e.clone(), e.alert()), (RecordError::PlaintextOverflow(MAX_PLAINTEXT + 2), Some(AlertDescription::RecordOverflow)));
    // Padding counts (§5.4): small content, too much padding.
    let (mut server, mut client) = pair_with(9);
    let mut inner = vec![b'y'; 100];
    inner.push(CT_APPDATA);
    inner.resize(MAX_PLAINTEXT + 2, 0);
    assert_eq!(open_err(&mut server, seal_inner(&mut client, &inner)), RecordError::PlaintextOverflow(MAX_PLAINTEXT + 2));
}

#[test]
fn zero_content_type_bad_alerts_and_peer_alerts() {
    let (mut server, mut client) = pair_with(10);
    let e = open_err(&mut server, seal_inner(&mut client, &[0, 0, 0, 0]));
    assert_eq!((e.clone(), e.alert()), (RecordError::NoContentType, Some(AlertDescription::UnexpectedMessage)));
    for (inner, want) in [
        (&[CT_ALERT][..], RecordError::BadAlert(0)),
        (&[2, CT_ALERT][..], RecordError::BadAlert(1)),
        (&[2, 40, 0, CT_ALERT][..], RecordError::BadAlert(3)),
        (&[7, 40, CT_ALERT][..], RecordError::BadAlert(2)),
        (&[2, 40, CT_ALERT][..], RecordError::PeerAlert(40)),
        (&[b'h', 0x14][..], RecordError::UnexpectedInnerType(0x14)),
        (&[b'h', 0x42][..], RecordError::UnexpectedInnerType(0x42)),
    ] {
        let (mut server, mut client) = pair_with(11);
        let e = open_err(&mut server, seal_inner(&mut client, inner));
        assert_eq!(e, want, "{inner:?}");
        let alert = match want {
            RecordError::BadAlert(_) => Some(AlertDescription::DecodeError),
            RecordError::PeerAlert(_) => None,
            _ => Some(AlertDescription::UnexpectedMessage),
        };
        assert_eq!(e.alert(), alert);
    }
    // user_canceled is not fatal: close_notify follows it.
    let (mut server, mut client) = pair_with(12);
    let mut wire = seal_inner(&mut client, &[1, 90, CT_ALERT]);
    wire.extend_from_slice(&seal_inner(&mut client, &[1, 0, CT_ALERT]));
    assert_eq!(server.open_all(&mut wire, &mut BytesMut::new()), Ok(Opened::CloseNotify));
}

#[test]
fn key_update_not_requested_moves_only_the_receiving_keys() {
    let (mut server, mut client) = pair_with(13);
    seal_open(&mut client, &mut server, b"before");
    // The client's KeyUpdate (as its record layer sends one), then data
    // under its new key, in one read.
    let mut wire = BytesMut::new();
    KEYS.with(|c| client.send_key_update(&mut c.borrow_mut(), &mut wire));
    client.seal_all(&mut BytesMut::from(&b"after"[..]), &mut wire).unwrap();
    let mut got = BytesMut::new();
    assert_eq!(server.open_all(&mut wire, &mut got), Ok(Opened::More));
    assert_eq!(&got[..], b"after");
    assert_eq!({ server.rx.seq }, 1);
    // Nothing is owed back: an empty flush writes nothing.
    let mut out = BytesMut::new();
    server.seal_all(&mut BytesMut::new(), &mut out).unwrap();
    assert!(out.is_empty());
    seal_open(&mut server, &mut client, b"reply under the old server key");
}

#[test]
fn key_update_requested_is_answered_before_the_next_record() {
    let (mut server, mut client) = pair_with(14);
    let mut wire = seal_inner(&mut client, &[HS_KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED, CT_HANDSHAKE]);
    // (The client's sending key moves on after its KeyUpdate.)
    client.tx_secret = client.tx_secret.next(client.alg);
    client.tx = Dir::from_traffic_secret(client.alg, &client.tx_secret);
    assert_eq!(server.open_all(&mut wire, &mut BytesMut::new()), Ok(Opened::More));
    // Even with nothing to send, the flush carries our KeyUpdate.
    let mut out = BytesMut::new();
    server.seal_all(&mut BytesMut::new(), &mut out).unwrap();
    assert_eq!(open_raw(&mut client, &mut out), (CT_HANDSHAKE, vec![HS_KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED]));
    assert!(out.is_empty());
    // The client follows (as its record layer does on that message).
    client.on_key_update(&[HS_KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED]).unwrap();
    KEYS.with(|c| c.borrow_mut().forget(client.id, Way::Rx));
    seal_open(&mut server, &mut client, b"under the server's new key");
    seal_open(&mut client, &mut server, b"under the client's new key");
    // Two requests before our next record are answered once.
    let mut wire = seal_inner(&mut client, &[HS_KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED, CT_HANDSHAKE]);
    client.tx_secret = client.tx_secret.next(client.alg);
    client.tx = Dir::from_traffic_secret(client.alg, &client.tx_secret);
    wire.extend_from_slice(&seal_inner(&mut client, &[HS_KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED, CT_HANDSHAKE]));
    client.tx_secret = client.tx_secret.next(client.alg);
    client.tx = Dir::from_traffic_secret(client.alg, &client.tx_secret);
    assert_eq!(server.open_all(&mut wire, &mut BytesMut::new()), Ok(Opened::More));
    let mut out = BytesMut::new();
    server.seal_all(&mut BytesMut::from(&b"data"[..]), &mut out).unwrap();
    let mut got = BytesMut::new();
    assert_eq!(client.open_all(&mut out, &mut got), Ok(Opened::More));
    assert_eq!(&got[..], b"data");
    assert_eq!({ client.rx.seq }, 1, "one KeyUpdate, then the data under the new key");
}

#[test]
fn malformed_key_updates_and_other_handshake_messages() {
    for (inner, want, alert) in [
        (&[HS_KEY_UPDATE, 0, 0, 1, 2, CT_HANDSHAKE][..], RecordError::KeyUpdateRequest(2), AlertDescription::IllegalParameter),
        (&[HS_KEY_UPDATE, 0, 0, 1, 0xff, CT_HANDSHAKE][..], RecordError::KeyUpdateRequest(0xff), AlertDescription::IllegalParameter),
        (&[HS_KEY_UPDATE, 0, 0, 2, 0, 0, CT_HANDSHAKE][..], RecordError::BadHandshake, AlertDescription::DecodeError),
        (&[CT_HANDSHAKE][..], RecordError::BadHandshake, AlertDescription::DecodeError),
        (&[HS_KEY_UPDATE, 0, 0, 1, CT_HANDSHAKE][..], RecordError::Misaligned, AlertDescription::UnexpectedMessage),
        (&[HS_KEY_UPDATE, 0, CT_HANDSHAKE][..], RecordError::Misaligned, AlertDescription::UnexpectedMessage),
        (&[HS_KEY_UPDATE, 0, 0, 1, 0, HS_KEY_UPDATE, 0, 0, 1, 0, CT_HANDSHAKE][..], RecordError::Misaligned, AlertDescription::UnexpectedMessage),
        (&[4, 0, 0, 1, 0, CT_HANDSHAKE][..], RecordError::PostHandshake(4), AlertDescription::UnexpectedMessage),
    ] {
        let (mut server, mut client) = pair_with(15);
        let e = open_err(&mut server, seal_inner(&mut client, inner));
        assert_eq!((e.clone(), e.alert()), (want, Some(alert)), "{inner:?}");
    }
}

#[test]
fn our_key_update_goes_out_every_n_records_and_the_peer_follows() {
    let (mut server, mut client) = pair_limit(16, 3);
    let mut wire = BytesMut::new();
    // 10 full records in one flush, then 5 one at a time.
    server.seal_all(&mut BytesMut::from(&vec![7u8; 10 * MAX_PLAINTEXT][..]), &mut wire).unwrap();
    for i in 0..5u8 {
        server.seal_all(&mut BytesMut::from(&[i][..]), &mut wire).unwrap();
    }
    let mut updates = 0;
    let mut data = 0;
    while !wire.is_empty() {
        match open_raw(&mut client, &mut wire) {
            (CT_HANDSHAKE, m) => {
                client.on_key_update(&m).unwrap();
                updates += 1;
            }
            (CT_APPDATA, _) => {
                data += 1;
                assert!(client.rx.seq <= 3, "more than 3 records under one key");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((data, updates), (15, 4));
    // The client's own record layer reads the same stream.
    let (mut server, mut client) = pair_limit(17, 2);
    let payload: Vec<u8> = (0..5 * MAX_PLAINTEXT + 7).map(|i| i as u8).collect();
    let mut wire = BytesMut::new();
    server.seal_all(&mut BytesMut::from(&payload[..]), &mut wire).unwrap();
    let mut got = BytesMut::new();
    assert_eq!(client.open_all(&mut wire, &mut got), Ok(Opened::More));
    assert_eq!(&got[..], &payload[..]);
    // An alert at the limit goes after a KeyUpdate too.
    let mut wire = BytesMut::new();
    assert!(server.close_notify(&mut wire));
    assert_eq!(client.open_all(&mut wire, &mut BytesMut::new()), Ok(Opened::CloseNotify));
}

/// Our HKDF-Expand-Label against rustls' own key schedule, on every
/// suite: the hand-off keys equal ours derived from the captured
/// secrets, a rustls client's KeyUpdate (`refresh_traffic_keys`) is
/// followed by our receiving side, and ours (every 2 records) by its.
#[test]
fn key_updates_interoperate_with_rustls() {
    use rustls::CipherSuite as C;
    use std::io::{Read, Write};
    for suite in [C::TLS13_AES_128_GCM_SHA256, C::TLS13_AES_256_GCM_SHA384, C::TLS13_CHACHA20_POLY1305_SHA256] {
        let (mut client, server, traffic) = handshake(suite);
        let mut r = Record13::with_limit(server.dangerous_extract_secrets().unwrap(), &traffic, 2, false).unwrap();
        let tx0 = Dir::from_traffic_secret(r.alg, &r.tx_secret);
        assert_eq!((tx0.key, tx0.iv), (r.tx.key, r.tx.iv), "{suite:?}");
        let rx0 = Dir::from_traffic_secret(r.alg, &r.rx_secret);
        assert_eq!((rx0.key, rx0.iv), (r.rx.key, r.rx.iv), "{suite:?}");
        for round in 0..3u8 {
            // Client → us, across a client KeyUpdate.
            client.writer().write_all(&[round; 100]).unwrap();
            client.refresh_traffic_keys().unwrap();
            client.writer().write_all(&[round + 10; 200]).unwrap();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut got = BytesMut::new();
            assert_eq!(r.open_all(&mut BytesMut::from(&wire[..]), &mut got), Ok(Opened::More), "{suite:?}");
            assert_eq!(got.len(), 300);
            assert!(got[..100].iter().all(|&b| b == round) && got[100..].iter().all(|&b| b == round + 10));
            // Us → client: 5 records, a KeyUpdate after every 2.
            let payload: Vec<u8> = (0..4 * MAX_PLAINTEXT + 3).map(|i| (i as u8) ^ round).collect();
            let mut wire = BytesMut::new();
            r.seal_all(&mut BytesMut::from(&payload[..]), &mut wire).unwrap();
            let mut rd = &wire[..];
            let mut back = Vec::new();
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
                let mut chunk = vec![0; 2 * MAX_PLAINTEXT];
                while let Ok(n @ 1..) = client.reader().read(&mut chunk) {
                    back.extend_from_slice(&chunk[..n]);
                }
            }
            assert!(back == payload, "{suite:?}: payload differs after our KeyUpdates");
        }
    }
}

/// An in-memory rustls handshake on `suite` with a server config as
/// ours (key log hook, secret extraction); returns both ends and what
/// [`SecretLog`] captured.
fn handshake(suite: rustls::CipherSuite) -> (rustls::ClientConnection, rustls::ServerConnection, TrafficSecrets) {
    use std::sync::Arc;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(made.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(made.key_pair.serialize_der()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == suite);
    let provider = Arc::new(provider);
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.key_log = Arc::new(SecretLog);
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
    let mut traffic = TrafficSecrets::default();
    take_captured();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().unwrap();
        traffic.absorb(take_captured());
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() && !c.wants_write() {
            break;
        }
    }
    assert!(traffic.client.is_some() && traffic.server.is_some(), "rustls logged no traffic secrets");
    (c, s, traffic)
}
