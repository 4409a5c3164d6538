//! TLS after the hand-off: TLS 1.3 connections leave rustls once the
//! handshake is done and run on ringgate's own record layer. These check the
//! record layer against a real rustls client: payloads spanning several
//! records in both directions, pipelined frames, close_notify after
//! DISCONNECT, and client KeyUpdates (followed after the hand-off). TLS
//! 1.2 (which stays on rustls) is run through the same checks. Forged
//! records and the alerts they get are in `tls_alerts.rs`.

mod common;

use common::*;

fn clients(s: &Server, v: TlsVersion, user: &str) -> Client {
    let mut c = s.client_tls(TlsOptions { version: v, ..TlsOptions::default() });
    c.login(user, "phone", 0);
    c
}

fn big_payloads_cross_records(v: TlsVersion) {
    let s = Config::default().start();
    let mut alice = clients(&s, v, "alice");
    let mut bob = clients(&s, v, "bob");
    // 60 000 bytes: four TLS records each way; then small ones pipelined
    // behind it in the same write.
    let big: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut burst = send_to_user(1, "bob", &big).encode();
    for i in 2..=20u64 {
        burst.extend(send_to_user(i, "bob", format!("small {i}").as_bytes()).encode());
    }
    alice.send_raw(&burst).unwrap();
    for i in 1..=20u64 {
        assert_eq!(alice.expect_sendack(i).status, 0);
    }
    let p = bob.expect_push();
    assert_eq!(p.seq, 1);
    assert_eq!(p.payload, big, "payload bytes differ after crossing records");
    for i in 2..=20u64 {
        bob.expect_push_seq(i, format!("small {i}").as_bytes());
    }
    bob.ack(20);
    bob.ping_pong(3);
}

#[test]
fn tls13_big_payloads_cross_records() {
    big_payloads_cross_records(TlsVersion::Tls13);
}

#[test]
fn tls12_big_payloads_cross_records() {
    big_payloads_cross_records(TlsVersion::Tls12);
}

fn disconnect_then_close_notify(v: TlsVersion) {
    let s = Config::default().start();
    let mut old = clients(&s, v, "alice");
    let _new = clients(&s, v, "alice");
    match old.recv_frame(WAIT) {
        Ok(Frame::Disconnect { reason: 6, .. }) => {}
        other => old.fail(format!("expected DISCONNECT(6), got {other:?}")),
    }
    match old.recv_frame(WAIT) {
        Err(RecvError::Closed) => {}
        other => old.fail(format!("expected close, got {other:?}")),
    }
    assert_eq!(old.close_clean, Some(true), "server closed without TLS close_notify");
}

#[test]
fn tls13_disconnect_is_followed_by_close_notify() {
    disconnect_then_close_notify(TlsVersion::Tls13);
}

#[test]
fn tls12_disconnect_is_followed_by_close_notify() {
    disconnect_then_close_notify(TlsVersion::Tls12);
}

#[test]
fn tls13_client_key_update_keeps_the_connection() {
    let mut s = Config::default().start();
    let mut c = clients(&s, TlsVersion::Tls13, "mallory");
    c.ping_pong(1);
    for i in 2..6 {
        c.tls_mut().unwrap().refresh_traffic_keys().unwrap();
        // The KeyUpdate goes out with the next write; the server follows it.
        c.ping_pong(i);
    }
    s.assert_alive();
    s.assert_no_panic();
}

#[test]
fn tls13_oversized_record_closes_only_that_connection() {
    // A raw TCP peer that completes a real handshake is out of reach of the
    // blocking client, so tamper at the frame level instead: a record whose
    // length header promises more than TLS 1.3 allows.
    let mut s = Config::default().start();
    let mut witness = clients(&s, TlsVersion::Tls13, "carol");
    let mut c = clients(&s, TlsVersion::Tls13, "mallory");
    c.ping_pong(1);
    // Write directly on the socket, under the TLS layer.
    use std::io::Write;
    let mut raw = c.raw_socket();
    raw.write_all(&[0x17, 0x03, 0x03, 0x7f, 0xff]).unwrap();
    match c.recv_frame(WAIT) {
        Err(RecvError::Closed) | Err(RecvError::Io(_)) => {}
        other => c.fail(format!("expected close after an oversized record, got {other:?}")),
    }
    s.assert_alive();
    s.assert_no_panic();
    witness.ping_pong(2);
}

#[test]
fn server_prefers_aes_128_gcm_over_the_clients_order() {
    // rustls clients list AES-256-GCM-SHA384 first; the server's order wins
    // (the SHA-384 suite costs ~40 µs more per handshake).
    let s = Config::default().start();
    let mut c = clients(&s, TlsVersion::Tls13, "alice");
    let suite = c.tls().unwrap().negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    c.ping_pong(1);
}
