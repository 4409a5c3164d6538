//! Transport edge cases: garbage instead of a ClientHello, silent and
//! stalled handshakes (handshake_timeout counts from accept and includes
//! TLS), clients vanishing mid-handshake, TLS versions, ALPN, the
//! certificate's names, and plain TCP mode.

mod common;

use std::io::Write;
use std::net::TcpStream;
use common::*;

/// A client that has logged in and keeps working: checked after each abuse.
fn assert_serving(s: &Server, witness: &mut Client, nonce: u64) {
    witness.ping_pong(nonce);
    let (mut fresh, _) = s.login(&format!("fresh{nonce}"), "dev", 0);
    fresh.ping_pong(nonce);
}

#[test]
fn garbage_instead_of_client_hello_is_closed() {
    // A long handshake timeout, so that a close can only come from the
    // garbage being refused.
    let s = Config::default().handshake_timeout_ms(60_000).start();
    let (mut witness, _) = s.login("witness", "phone", 0);
    let mut noise_bytes = noise(512, 0x5eed_1234_abcd_ef01);
    noise_bytes[0] = 0x99; // not a TLS content type
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise_bytes),
        ("HTTP GET", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
        ("a plain-TCP CONNECT frame", Frame::Connect(Connect::new(token("alice"), "phone", 0)).encode()),
        ("a TLS record header with a bogus length", vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x02]),
    ];
    for (i, (name, bytes)) in cases.into_iter().enumerate() {
        let mut raw = TcpStream::connect(s.addr()).unwrap();
        raw.write_all(&bytes).unwrap();
        if wait_closed_raw(&mut raw, WAIT).is_err() {
            panic!("{name}: connection still open 10 s after garbage\nstderr:\n{}", s.stderr_tail());
        }
        assert_serving(&s, &mut witness, i as u64);
    }
}

#[test]
fn silent_client_is_closed_after_handshake_timeout() {
    let s = Config::default().handshake_timeout_ms(500).start();
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    match wait_closed_raw(&mut raw, WAIT) {
        Ok(bytes) => assert!(bytes.is_empty() || bytes[0] == 0x15, "only a TLS alert may precede the close, got {bytes:02x?}"),
        Err(_) => panic!("silent connection still open 10 s after a 500 ms handshake timeout\nstderr:\n{}", s.stderr_tail()),
    }
    let (mut c, _) = s.login("alice", "phone", 0);
    c.ping_pong(1);
}

#[test]
fn tls_done_but_no_connect_gets_disconnect_9() {
    let s = Config::default().handshake_timeout_ms(500).start();
    let mut c = s.client();
    c.expect_disconnect(reason::HANDSHAKE_TIMEOUT);
}

#[test]
fn stalled_half_client_hello_is_closed_after_handshake_timeout() {
    let s = Config::default().handshake_timeout_ms(500).start();
    let hello = client_hello_bytes(s.cert_path());
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    raw.write_all(&hello[..hello.len() / 2]).unwrap();
    if wait_closed_raw(&mut raw, WAIT).is_err() {
        panic!("half a ClientHello and silence: still open 10 s after a 500 ms handshake timeout\nstderr:\n{}", s.stderr_tail());
    }
    let (mut c, _) = s.login("alice", "phone", 0);
    c.ping_pong(1);
}

#[test]
fn clients_vanishing_mid_handshake_do_not_affect_others() {
    let s = Server::default_start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    let hello = client_hello_bytes(s.cert_path());
    for i in 0..20usize {
        let mut raw = TcpStream::connect(s.addr()).unwrap();
        let cut = 1 + (i * 37) % (hello.len() - 1);
        raw.write_all(&hello[..cut]).unwrap();
        drop(raw);
    }
    // And some that get the whole ClientHello out and then vanish.
    for _ in 0..5 {
        let mut raw = TcpStream::connect(s.addr()).unwrap();
        raw.write_all(&hello).unwrap();
        drop(raw);
    }
    for i in 1..=3u64 {
        alice.send_ok(i, "bob", b"still fine");
        bob.expect_push_seq(i, b"still fine");
        bob.ack(i);
    }
    assert_serving(&s, &mut bob, 99);
}

#[test]
fn tls12_client_works() {
    let s = Server::default_start();
    let mut bob = s.client_tls(TlsOptions { version: TlsVersion::Tls12, ..TlsOptions::default() });
    assert_eq!(bob.tls().unwrap().protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    bob.login("bob", "phone", 0);
    let mut alice = s.client_tls(TlsOptions { version: TlsVersion::Tls12, ..TlsOptions::default() });
    alice.login("alice", "phone", 0);
    let a = alice.send_ok(1, "bob", b"over tls 1.2");
    let p = bob.expect_push_seq(1, b"over tls 1.2");
    assert_eq!(p.msg_id, a.msg_id);
    bob.ping_pong(12);
}

#[test]
fn tls13_client_works_and_alpn_is_negotiated() {
    let s = Server::default_start();
    let mut c = s.client_tls(TlsOptions { version: TlsVersion::Tls13, ..TlsOptions::default() });
    let tls = c.tls().unwrap();
    assert_eq!(tls.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(tls.alpn_protocol(), Some(ALPN), "server must select ALPN ringgate/1 when offered");
    c.login("alice", "phone", 0);
    c.ping_pong(13);
}

#[test]
fn client_without_alpn_is_accepted() {
    let s = Server::default_start();
    let mut c = s.client_tls(TlsOptions { alpn: false, ..TlsOptions::default() });
    assert_eq!(c.tls().unwrap().alpn_protocol(), None);
    c.login("alice", "phone", 0);
    c.ping_pong(1);
}

#[test]
fn dev_certificate_is_valid_for_localhost_and_127_0_0_1() {
    let s = Server::default_start();
    for name in ["localhost", "127.0.0.1"] {
        let mut c = s.client_tls(TlsOptions { server_name: name, ..TlsOptions::default() });
        c.login("alice", name, 0);
        c.ping_pong(1);
    }
    // And for nothing else: a client that checks the name refuses it.
    let r = Client::connect_tls(s.addr(), s.cert_path(), TlsOptions { server_name: "example.com", ..TlsOptions::default() });
    assert!(r.is_err(), "dev certificate accepted for example.com");
}

#[test]
fn plain_tcp_mode_works() {
    let s = Config::default().tls(false).start();
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.user_id.as_str(), ack.head_seq, ack.oldest_seq), ("bob", 0, 1));
    let (mut alice, _) = s.login("alice", "phone", 0);
    let a = alice.send_ok(1, "bob", b"in the clear");
    let p = bob.expect_push_seq(1, b"in the clear");
    assert_eq!((p.msg_id, p.from.as_str(), p.flags), (a.msg_id, "alice", 0));
    bob.ack(1);
    bob.ping_pong(2);
    // A first frame that is not CONNECT is still refused.
    let mut c = s.client();
    c.send_frame(&Frame::Ping { nonce: 1 });
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

#[test]
fn plain_tcp_handshake_timeout_gets_disconnect_9() {
    let s = Config::default().tls(false).handshake_timeout_ms(500).start();
    let mut c = s.client();
    c.expect_disconnect(reason::HANDSHAKE_TIMEOUT);
    let (mut ok, _) = s.login("alice", "phone", 0);
    ok.ping_pong(1);
}

#[test]
fn plain_tcp_mode_survives_garbage() {
    let s = Config::default().tls(false).handshake_timeout_ms(60_000).start();
    let (mut witness, _) = s.login("witness", "phone", 0);
    // An ASCII letter first is HTTP on the gateway port (WEB.md "One
    // port"): an unknown path is a 404, and `Connection: close` closes.
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let got = wait_closed_raw(&mut raw, WAIT).unwrap_or_else(|g| panic!("HTTP to a plain server: still open (got {g:02x?})"));
    assert!(got.starts_with(b"HTTP/1.1 404 "), "{}", String::from_utf8_lossy(&got));
    // A TLS ClientHello (16 03 01 ..) is a frame length far above max_frame.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("TLS ClientHello", {
            let tls_server = Server::default_start();
            client_hello_bytes(tls_server.cert_path())
        }),
    ];
    for (i, (name, bytes)) in cases.into_iter().enumerate() {
        let mut raw = TcpStream::connect(s.addr()).unwrap();
        raw.write_all(&bytes).unwrap();
        let got = match wait_closed_raw(&mut raw, WAIT) {
            Ok(got) => got,
            Err(got) => panic!("{name} to a plain server: still open after 10 s (got {got:02x?})\nstderr:\n{}", s.stderr_tail()),
        };
        // What came back before the close is one DISCONNECT(1 or 2).
        assert!(got.len() >= 5, "{name}: closed without a DISCONNECT (got {got:02x?})");
        let len = u32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
        assert_eq!(got.len(), 4 + len, "{name}: expected exactly one frame, got {got:02x?}");
        match Frame::decode(got[4], &got[5..]) {
            Ok(Frame::Disconnect { reason, .. }) if reason == 1 || reason == 2 => {}
            other => panic!("{name}: expected DISCONNECT(1 or 2), got {other:?}"),
        }
        assert_serving(&s, &mut witness, i as u64);
    }
}
