//! The TLS 1.3 record layer against a client that forges records (RFC 8446
//! §5, §6, §4.6.3): after a real handshake, this client seals and opens
//! records with its own code (aws-lc-rs AEAD and HKDF, independent of the
//! server's), sends what a broken or hostile peer would (a wrong tag,
//! oversized ciphertext and plaintext, a zero content type, KeyUpdates with
//! each request value, a change_cipher_spec after Finished, an empty alert)
//! and checks the exact alert that comes back, that it is the only alert,
//! and that the connection then closes. Also: the same during the
//! handshake (before and after the server's flight), and KeyUpdates from
//! both sides that keep a connection working.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use common::*;

const CT_CCS: u8 = 0x14;
const CT_ALERT: u8 = 0x15;
const CT_HANDSHAKE: u8 = 0x16;
const CT_APPDATA: u8 = 0x17;
const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;

// Alert descriptions (RFC 8446 §6).
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;

/// The client's key log: the traffic secrets by label.
#[derive(Debug, Default)]
struct Log(Mutex<HashMap<String, Vec<u8>>>);

impl rustls::KeyLog for Log {
    fn log(&self, label: &str, _random: &[u8], secret: &[u8]) {
        self.0.lock().unwrap().insert(label.to_string(), secret.to_vec());
    }
}

impl Log {
    fn get(&self, label: &str) -> Vec<u8> {
        self.0.lock().unwrap().get(label).cloned().unwrap_or_else(|| panic!("no {label} logged"))
    }
}

struct OutLen(usize);
impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(h: hkdf::Algorithm, secret: &[u8], label: &[u8], len: usize) -> Vec<u8> {
    let full = [b"tls13 ".as_slice(), label].concat();
    let info: [&[u8]; 4] = [&(len as u16).to_be_bytes(), &[full.len() as u8], &full, &[0]];
    let mut out = vec![0; len];
    hkdf::Prk::new_less_safe(h, secret).expand(&info, OutLen(len)).unwrap().fill(&mut out).unwrap();
    out
}

/// One direction's keys, derived from its traffic secret.
struct Keys {
    aead: &'static aead::Algorithm,
    hash: hkdf::Algorithm,
    secret: Vec<u8>,
    key: LessSafeKey,
    iv: Vec<u8>,
    seq: u64,
}

impl Keys {
    fn new(suite: rustls::CipherSuite, secret: Vec<u8>) -> Keys {
        let (aead, hash): (&'static aead::Algorithm, _) = match suite {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => (&aead::AES_128_GCM, hkdf::HKDF_SHA256),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => (&aead::AES_256_GCM, hkdf::HKDF_SHA384),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256),
            other => panic!("suite {other:?}"),
        };
        Keys::new_with(aead, hash, secret)
    }

    /// The next generation (KeyUpdate), from sequence number 0.
    fn update(&mut self) {
        let next = expand_label(self.hash, &self.secret, b"traffic upd", self.secret.len());
        *self = Keys::new_with(self.aead, self.hash, next);
    }

    fn new_with(aead: &'static aead::Algorithm, hash: hkdf::Algorithm, secret: Vec<u8>) -> Keys {
        let key = expand_label(hash, &secret, b"key", aead.key_len());
        let iv = expand_label(hash, &secret, b"iv", 12);
        Keys { aead, hash, key: LessSafeKey::new(UnboundKey::new(aead, &key).unwrap()), iv, secret, seq: 0 }
    }

    fn nonce(&self) -> Nonce {
        let mut n: [u8; 12] = self.iv.clone().try_into().unwrap();
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Seals an inner plaintext (content, type, padding) as one record;
    /// `tamper` flips a bit of the tag.
    fn seal(&mut self, inner: &[u8], tamper: bool) -> Vec<u8> {
        let len = inner.len() + 16;
        let mut rec = vec![CT_APPDATA, 3, 3, (len >> 8) as u8, len as u8];
        let mut body = inner.to_vec();
        let tag = self.key.seal_in_place_separate_tag(self.nonce(), Aad::from(&rec[..5]), &mut body).unwrap();
        body.extend_from_slice(tag.as_ref());
        if tamper {
            *body.last_mut().unwrap() ^= 1;
        }
        rec.extend_from_slice(&body);
        self.seq += 1;
        rec
    }

    /// Opens one protected record body; returns (inner type, content).
    fn open(&mut self, hdr: &[u8], body: &mut [u8]) -> (u8, Vec<u8>) {
        let pt = self.key.open_in_place(self.nonce(), Aad::from(hdr), body).expect("the server's record authenticates");
        self.seq += 1;
        let end = pt.iter().rposition(|&b| b != 0).expect("a content type");
        (pt[end], pt[..end].to_vec())
    }
}

/// What the server sent, record by record.
#[derive(Debug, PartialEq, Eq)]
enum Rec {
    /// A protected record, opened: (inner type, content).
    Sealed(u8, Vec<u8>),
    /// A plaintext record: (type, content).
    Plain(u8, Vec<u8>),
    /// The server closed the connection (FIN or RST).
    Closed,
}

/// Reads whole records off a raw socket.
struct RecordReader {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl RecordReader {
    fn next(&mut self, deadline: Instant) -> Option<(Vec<u8>, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u16::from_be_bytes([self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() >= 5 + len {
                    let rec: Vec<u8> = self.buf.drain(..5 + len).collect();
                    return Some((rec[..5].to_vec(), rec[5..].to_vec()));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no complete record from the server in time ({} bytes buffered)", self.buf.len());
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 32 * 1024];
            match self.sock.read(&mut tmp) {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "connection closed inside a record: {:02x?}", self.buf);
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// A logged-in TLS 1.3 connection whose records after the handshake are
/// sealed and opened here.
struct Forger {
    reader: RecordReader,
    sock: TcpStream,
    tx: Keys,
    rx: Keys,
    /// KeyUpdates received from the server (and followed).
    server_updates: usize,
    /// Frame bytes received, not yet parsed.
    frames: Vec<u8>,
}

fn client_config(s: &Server, log: Arc<Log>) -> Arc<rustls::ClientConfig> {
    let base = tls_config(s.cert_path(), TlsOptions { version: TlsVersion::Tls13, ..TlsOptions::default() });
    let mut cfg = (*base).clone();
    cfg.key_log = log;
    Arc::new(cfg)
}

impl Forger {
    /// Handshakes with rustls, then takes over the records and logs in.
    fn connect(s: &Server, user: &str) -> Forger {
        let log = Arc::new(Log::default());
        let mut tls = rustls::ClientConnection::new(client_config(s, log.clone()), "localhost".try_into().unwrap()).unwrap();
        let mut sock = TcpStream::connect(s.addr()).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).unwrap();
        }
        while tls.wants_write() {
            tls.write_tls(&mut sock).unwrap();
        }
        let suite = tls.negotiated_cipher_suite().unwrap().suite();
        let tx = Keys::new(suite, log.get("CLIENT_TRAFFIC_SECRET_0"));
        let rx = Keys::new(suite, log.get("SERVER_TRAFFIC_SECRET_0"));
        // rustls read nothing past the server's Finished (the session
        // ticket comes after ours), so both sequence numbers start at 0.
        let reader = RecordReader { sock: sock.try_clone().unwrap(), buf: Vec::new() };
        let mut f = Forger { reader, sock, tx, rx, server_updates: 0, frames: Vec::new() };
        f.send_frame(&Frame::Connect(Connect::new(token(user), "dev", 0)));
        match f.frame() {
            Frame::ConnAck(a) if a.status == connack::OK => {}
            other => panic!("login: {other:?}"),
        }
        f
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    fn send_frame(&mut self, f: &Frame) {
        let mut inner = f.encode();
        inner.push(CT_APPDATA);
        let rec = self.tx.seal(&inner, false);
        self.send(&rec);
    }

    /// Sends a record with this inner plaintext under the current key.
    fn send_inner(&mut self, inner: &[u8]) {
        let rec = self.tx.seal(inner, false);
        self.send(&rec);
    }

    /// The next record from the server; KeyUpdates are followed (and
    /// counted) and session tickets skipped here.
    fn record(&mut self) -> Rec {
        let deadline = Instant::now() + WAIT;
        loop {
            let Some((hdr, mut body)) = self.reader.next(deadline) else { return Rec::Closed };
            if hdr[0] != CT_APPDATA {
                return Rec::Plain(hdr[0], body);
            }
            match self.rx.open(&hdr, &mut body) {
                (CT_HANDSHAKE, m) if m.first() == Some(&NEW_SESSION_TICKET) => {}
                (CT_HANDSHAKE, m) if m.first() == Some(&KEY_UPDATE) => {
                    assert_eq!(m, [KEY_UPDATE, 0, 0, 1, 0], "the server's KeyUpdate must not request one back");
                    self.rx.update();
                    self.server_updates += 1;
                }
                (ty, content) => return Rec::Sealed(ty, content),
            }
        }
    }

    /// The next frame from the server.
    fn frame(&mut self) -> Frame {
        loop {
            if self.frames.len() >= 4 {
                let len = u32::from_be_bytes(self.frames[..4].try_into().unwrap()) as usize;
                if self.frames.len() >= 4 + len {
                    let f: Vec<u8> = self.frames.drain(..4 + len).collect();
                    return Frame::decode(f[4], &f[5..]).unwrap();
                }
            }
            match self.record() {
                Rec::Sealed(CT_APPDATA, d) => self.frames.extend_from_slice(&d),
                other => panic!("expected application data, got {other:?}"),
            }
        }
    }

    fn ping_pong(&mut self, nonce: u64) {
        self.send_frame(&Frame::Ping { nonce });
        match self.frame() {
            Frame::Pong { nonce: n } if n == nonce => {}
            other => panic!("expected PONG({nonce}), got {other:?}"),
        }
    }

    /// The server's answer must be exactly one fatal alert `desc`,
    /// protected, then the close: no second alert, no close_notify.
    #[track_caller]
    fn expect_alert_and_close(&mut self, desc: u8) {
        assert_eq!(self.record(), Rec::Sealed(CT_ALERT, vec![2, desc]), "the alert");
        assert_eq!(self.record(), Rec::Closed, "nothing may follow the alert");
    }
}

/// Starts a server, and checks after `case` that it still serves others.
fn with_server(case: impl FnOnce(&Server)) {
    let mut s = Config::default().start();
    let mut witness = s.client_tls(TlsOptions { version: TlsVersion::Tls13, ..TlsOptions::default() });
    witness.login("witness", "phone", 0);
    case(&s);
    s.assert_alive();
    s.assert_no_panic();
    witness.ping_pong(77);
}

#[test]
fn wrong_tag_is_bad_record_mac() {
    with_server(|s| {
        let mut f = Forger::connect(s, "alice");
        f.ping_pong(1);
        let mut inner = Frame::Ping { nonce: 2 }.encode();
        inner.push(CT_APPDATA);
        let rec = f.tx.seal(&inner, true);
        f.send(&rec);
        f.expect_alert_and_close(BAD_RECORD_MAC);
    });
}

#[test]
fn oversized_ciphertext_is_record_overflow() {
    with_server(|s| {
        let mut f = Forger::connect(s, "alice");
        // 2^14 + 257 bytes announced; the header alone is enough.
        let len = (1u16 << 14) + 257;
        f.send(&[CT_APPDATA, 3, 3, (len >> 8) as u8, len as u8, 0, 0, 0]);
        f.expect_alert_and_close(RECORD_OVERFLOW);
    });
}

#[test]
fn oversized_plaintext_is_record_overflow_and_the_largest_is_accepted() {
    with_server(|s| {
        let mut f = Forger::connect(s, "alice");
        // The largest record: a PING, its type and zero padding, 2^14 + 1
        // bytes in all.
        let mut inner = Frame::Ping { nonce: 1 }.encode();
        inner.push(CT_APPDATA);
        inner.resize((1 << 14) + 1, 0);
        f.send_inner(&inner);
        match f.frame() {
            Frame::Pong { nonce: 1 } => {}
            other => panic!("expected PONG(1) for the largest record, got {other:?}"),
        }
        // One byte more of padding: content + type + padding is 2^14 + 2.
        let mut inner = Frame::Ping { nonce: 2 }.encode();
        inner.push(CT_APPDATA);
        inner.resize((1 << 14) + 2, 0);
        f.send_inner(&inner);
        f.expect_alert_and_close(RECORD_OVERFLOW);
    });
    with_server(|s| {
        let mut f = Forger::connect(s, "alice");
        // 2^14 + 1 bytes of content.
        let mut inner = vec![b'x'; (1 << 14) + 1];
        inner.push(CT_APPDATA);
        f.send_inner(&inner);
        f.expect_alert_and_close(RECORD_OVERFLOW);
    });
}

#[test]
fn zero_content_type_is_unexpected_message() {
    with_server(|s| {
        let mut f = Forger::connect(s, "alice");
        f.send_inner(&[0, 0, 0, 0, 0]);
        f.expect_alert_and_close(UNEXPECTED_MESSAGE);
    });
}

#[test]
fn change_cipher_spec_after_finished_is_unexpected_message() {
    with_server(|s| {
        let mut f = Forger::connect(s, "alice");
        f.ping_pong(1);
        f.send(&[CT_CCS, 3, 3, 0, 1, 1]);
        f.expect_alert_and_close(UNEXPECTED_MESSAGE);
    });
}

#[test]
fn empty_and_malformed_alerts_are_decode_error() {
    with_server(|s| {
        for inner in [&[CT_ALERT][..], &[2, CT_ALERT][..], &[2, 40, 1, CT_ALERT][..]] {
            let mut f = Forger::connect(s, "alice");
            f.send_inner(inner);
            f.expect_alert_and_close(DECODE_ERROR);
        }
    });
}

/// The client's close_notify is answered with the server's (RFC 8446
/// §6.1), once, and then the connection closes.
#[test]
fn close_notify_is_answered_with_close_notify() {
    with_server(|s| {
        let mut f = Forger::connect(s, "alice");
        f.ping_pong(1);
        f.send_inner(&[1, 0, CT_ALERT]);
        assert_eq!(f.record(), Rec::Sealed(CT_ALERT, vec![1, 0]), "the server's close_notify");
        assert_eq!(f.record(), Rec::Closed, "nothing may follow close_notify");
    });
}

#[test]
fn key_update_with_each_request_value() {
    with_server(|s| {
        // update_not_requested: the server follows and owes nothing back.
        let mut f = Forger::connect(s, "alice");
        f.ping_pong(1);
        f.send_inner(&[KEY_UPDATE, 0, 0, 1, 0, CT_HANDSHAKE]);
        f.tx.update();
        f.ping_pong(2);
        assert_eq!(f.server_updates, 0);
        // update_requested: the server's KeyUpdate comes before its next
        // record (the PONG, opened under the new key).
        f.send_inner(&[KEY_UPDATE, 0, 0, 1, 1, CT_HANDSHAKE]);
        f.tx.update();
        f.ping_pong(3);
        assert_eq!(f.server_updates, 1);
        // Again, with the request and a PING in one write.
        let mut both = f.tx.seal(&[KEY_UPDATE, 0, 0, 1, 1, CT_HANDSHAKE], false);
        f.tx.update();
        let mut ping = Frame::Ping { nonce: 4 }.encode();
        ping.push(CT_APPDATA);
        both.extend_from_slice(&f.tx.seal(&ping, false));
        f.send(&both);
        match f.frame() {
            Frame::Pong { nonce: 4 } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(f.server_updates, 2);
        // An invalid request_update.
        f.send_inner(&[KEY_UPDATE, 0, 0, 1, 2, CT_HANDSHAKE]);
        f.expect_alert_and_close(ILLEGAL_PARAMETER);
    });
}

#[test]
fn server_key_update_after_the_configured_record_count() {
    let s = Config::default().set("tls", "key_update_after_records = 3").start();
    let mut f = Forger::connect(&s, "alice");
    // CONNACK and the ticket went under the first key; 20 PONGs later the
    // server must have moved on every 3 records.
    for i in 0..20 {
        f.ping_pong(i);
    }
    assert!(f.server_updates >= 6, "only {} server KeyUpdates in 20+ records", f.server_updates);
    assert!(f.rx.seq <= 3);
}

/// A ClientHello record longer than 2^14 bytes of plaintext (§5.1): a
/// plaintext alert, since no key is in use yet.
#[test]
fn client_hello_over_two_to_the_fourteen_is_record_overflow() {
    with_server(|s| {
        let hello = client_hello_bytes(s.cert_path());
        assert_eq!(hello[0], CT_HANDSHAKE);
        for len in [(1usize << 14) + 1, (1 << 14) + 300] {
            // The real ClientHello message, then filler, in one record.
            let mut body = hello[5..].to_vec();
            body.resize(len, 0);
            let mut rec = vec![CT_HANDSHAKE, 3, 1, (len >> 8) as u8, len as u8];
            rec.extend_from_slice(&body);
            let mut raw = TcpStream::connect(s.addr()).unwrap();
            raw.write_all(&rec).unwrap();
            let got = wait_closed_raw(&mut raw, WAIT).expect("closed");
            assert_eq!(got, [CT_ALERT, 3, 3, 0, 2, 2, RECORD_OVERFLOW], "ClientHello record of {len} bytes");
        }
    });
}

/// An oversized record after the server's flight and before the client's
/// Finished: rustls owns the connection still, but already protects what
/// it sends with the server's first application key, so the alert comes
/// sealed under it.
#[test]
fn oversized_record_during_the_handshake_is_record_overflow() {
    with_server(|s| {
        let log = Arc::new(Log::default());
        let mut tls = rustls::ClientConnection::new(client_config(s, log.clone()), "localhost".try_into().unwrap()).unwrap();
        let mut sock = TcpStream::connect(s.addr()).unwrap();
        while tls.wants_write() {
            tls.write_tls(&mut sock).unwrap();
        }
        // Read the server's flight until the client has its Finished ready,
        // and do not send it.
        sock.set_read_timeout(Some(WAIT)).unwrap();
        while tls.is_handshaking() {
            tls.read_tls(&mut sock).unwrap();
            tls.process_new_packets().unwrap();
        }
        let suite = tls.negotiated_cipher_suite().unwrap().suite();
        let rx = Keys::new(suite, log.get("SERVER_TRAFFIC_SECRET_0"));
        let len = (1u16 << 14) + 257;
        sock.write_all(&[CT_APPDATA, 3, 3, (len >> 8) as u8, len as u8, 0, 0]).unwrap();
        let mut f = Forger {
            reader: RecordReader { sock: sock.try_clone().unwrap(), buf: Vec::new() },
            tx: Keys::new(suite, log.get("CLIENT_TRAFFIC_SECRET_0")),
            sock,
            rx,
            server_updates: 0,
            frames: Vec::new(),
        };
        f.expect_alert_and_close(RECORD_OVERFLOW);
    });
}

/// A rustls client and the server both rotate keys on a connection that
/// carries messages the whole time: the client every few messages
/// (`refresh_traffic_keys`), the server every 4 records (a small
/// `tls.key_update_after_records`).
#[test]
fn long_lived_connection_survives_key_updates_from_both_sides() {
    let s = Config::default().set("tls", "key_update_after_records = 4").start();
    let opts = TlsOptions { version: TlsVersion::Tls13, ..TlsOptions::default() };
    let mut alice = s.client_tls(opts);
    alice.login("alice", "phone", 0);
    let mut bob = s.client_tls(opts);
    bob.login("bob", "phone", 0);
    let started = Instant::now();
    for i in 1..=300u64 {
        if i % 7 == 0 {
            alice.tls_mut().unwrap().refresh_traffic_keys().unwrap();
        }
        if i % 11 == 0 {
            bob.tls_mut().unwrap().refresh_traffic_keys().unwrap();
        }
        let payload = format!("message {i} {}", "x".repeat((i as usize * 37) % 3000));
        alice.send_ok(i, "bob", payload.as_bytes());
        bob.expect_push_seq(i, payload.as_bytes());
        bob.ack(i);
    }
    alice.ping_pong(1);
    bob.ping_pong(2);
    assert!(started.elapsed() < Duration::from_secs(60));
}
