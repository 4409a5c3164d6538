//! Fuzz entry points: each takes arbitrary bytes, drives one peer-facing layer with them, and panics only on a broken invariant.
//!
//! The cargo-fuzz targets in `fuzz/` are one-liners calling these, and
//! `tests/fuzz_corpus.rs` runs the committed seed corpus and a bounded
//! number of random inputs through the same functions in the normal test
//! run, so a crash found by fuzzing stays fixed without nightly.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::proto::frame::{self, Frame};
use crate::proto::session::{EntryRef, Event, InboxRead, Phase, Session, SessionLimits};
use crate::runtime::conn::{Conn, Tls};
use crate::runtime::tls_record::Record13;

/// The frame decoder: never panics, and whatever it decodes re-encodes to
/// the same bytes and decodes to the same frame.
pub fn frame_decode(data: &[u8]) {
    let max = 1 + (u32::from(*data.first().unwrap_or(&0)) << 8);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match frame::decode(&mut buf, max) {
            Ok(Some(f)) => {
                let used = before.len() - buf.len();
                let mut again = BytesMut::new();
                f.encode(&mut again);
                assert_eq!(&again[..], &before[..used], "re-encoding {f:?} differs");
                let mut b2 = again.clone();
                let f2 = frame::decode(&mut b2, max).expect("re-decode").expect("complete");
                assert_eq!(f, f2);
            }
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) must leave the buffer untouched");
                return;
            }
            Err(_) => return,
        }
    }
}

/// An inbox of `head` small entries, the oldest `oldest`.
struct Inbox {
    oldest: u64,
    head: u64,
}

impl InboxRead for Inbox {
    fn bounds(&self) -> (u64, u64) {
        (self.oldest, self.head)
    }
    fn get(&self, seq: u64) -> Option<EntryRef<'_>> {
        (seq >= self.oldest && seq <= self.head).then(|| EntryRef {
            msg_id: seq * 7,
            timestamp_ms: seq,
            from: "fuzz",
            payload: Bytes::from_static(b"payload"),
        })
    }
}

/// The session state machine fed arbitrary bytes in arbitrary chunks, with
/// time jumps, timeouts, inbox growth and retention in between. Checks: the
/// window bound, PUSH seqs within the inbox, and that everything the
/// session writes is a well-formed server frame.
pub fn session(data: &[u8]) {
    let lim = SessionLimits { ack_timeout_ms: 50, handshake_timeout_ms: 1_000, heartbeat_s: 1, inflight_window: 4, max_retries: 2, max_frame: 4096 };
    let mut now = 0u64;
    let mut s = Session::new(now, &lim);
    let mut inbox = Inbox { oldest: 1, head: 0 };
    let mut rbuf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 8 {
            // Bytes from the peer: a chunk of the given length.
            0..=3 => {
                let n = (op as usize / 8).min(rest.len());
                rbuf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            // Time passes and timers fire.
            4 => {
                now += u64::from(op / 8) * 37;
                s.on_timeout(now, &lim, &inbox, op & 0x80 != 0, &mut out);
            }
            // New messages arrive.
            5 => {
                inbox.head += u64::from(op / 8 % 5);
                s.fill(now, &lim, &inbox, &mut out);
            }
            // Retention drops some.
            6 => inbox.oldest = (inbox.oldest + u64::from(op / 8 % 3)).min(inbox.head + 1),
            // The server closes.
            _ => s.close(now, crate::proto::DisconnectReason::ServerShutdown, "fuzz", &mut out),
        }
        for _ in 0..64 {
            match s.poll_frame(now, &lim, &mut rbuf, &mut out) {
                Event::NeedMore | Event::Closed => break,
                Event::Connect(req) => {
                    if req.last_seq % 3 == 0 {
                        s.refuse(now, &lim, 2, &mut out);
                    } else {
                        s.accept(now, now, &lim, "fuzz", &req, inbox.bounds(), now + 500, &mut out);
                        s.fill(now, &lim, &inbox, &mut out);
                    }
                }
                Event::Acked => {
                    s.fill(now, &lim, &inbox, &mut out);
                }
                Event::Handled | Event::Send(_) => {}
            }
        }
        if s.phase() == Phase::Open {
            assert!(s.inflight() <= u64::from(lim.inflight_window), "window exceeded");
            assert!(s.sent() <= inbox.head, "pushed beyond head");
        }
        check_server_output(&mut out, lim.max_frame);
    }
}

/// Everything a session writes decodes as server frames within the limit
/// (PUSHes carry at most what fits; CONNACK/DISCONNECT are small).
fn check_server_output(out: &mut BytesMut, max_frame: u32) {
    while !out.is_empty() {
        match frame::decode(out, max_frame) {
            Ok(Some(f)) => assert!(
                matches!(f, Frame::ConnAck(_) | Frame::Push(_) | Frame::Pong { .. } | Frame::Disconnect { .. } | Frame::SendAck(_)),
                "server wrote {f:?}"
            ),
            other => panic!("server output does not decode: {other:?}"),
        }
    }
}

/// A matched pair of TLS 1.3 record layers (client side, server side),
/// from one real in-memory handshake with the development certificate.
///
/// The handshake runs once per process: its secrets are kept as raw bytes
/// and each input gets fresh record layers built from them (a handshake per
/// input made this target ~40× slower than the others). Reusing keys is
/// fine here: nothing sealed leaves the process.
fn record_pair() -> (Record13, Record13) {
    static KEYS: OnceLock<([RawDir; 4], crate::runtime::tls_record::TrafficSecrets)> = OnceLock::new();
    let (k, traffic) = KEYS.get_or_init(|| {
        crate::runtime::tls_record::take_captured();
        let (client, server) = handshake_in_memory();
        // The server config's key log hook captured both traffic secrets.
        let traffic = crate::runtime::tls_record::take_captured();
        let c = client.dangerous_extract_secrets().expect("client secrets");
        let s = server.dangerous_extract_secrets().expect("server secrets");
        ([RawDir::of(&c.tx), RawDir::of(&c.rx), RawDir::of(&s.tx), RawDir::of(&s.rx)], traffic)
    });
    let build = |tx: &RawDir, rx: &RawDir, client: bool| {
        let secrets = rustls::ExtractedSecrets { tx: tx.secrets(), rx: rx.secrets() };
        Record13::with_limit(secrets, traffic, crate::runtime::tls_record::DEFAULT_KEY_UPDATE_AFTER_RECORDS, client).expect("record layer")
    };
    (build(&k[0], &k[1], true), build(&k[2], &k[3], false))
}

/// One direction's traffic secret as plain bytes (rustls' types are not `Clone`).
struct RawDir {
    seq: u64,
    suite: u8,
    key: [u8; 32],
    iv: [u8; 12],
}

impl RawDir {
    fn of((seq, s): &(u64, rustls::ConnectionTrafficSecrets)) -> Self {
        use rustls::ConnectionTrafficSecrets as S;
        let (suite, key, iv) = match s {
            S::Aes128Gcm { key, iv } => (0, key.as_ref(), iv.as_ref()),
            S::Aes256Gcm { key, iv } => (1, key.as_ref(), iv.as_ref()),
            S::Chacha20Poly1305 { key, iv } => (2, key.as_ref(), iv.as_ref()),
            _ => panic!("unexpected suite in the fuzz fixture"),
        };
        let mut d = RawDir { seq: *seq, suite, key: [0; 32], iv: [0; 12] };
        d.key[..key.len()].copy_from_slice(key);
        d.iv.copy_from_slice(iv);
        d
    }

    /// The secret again. AES-128's key comes back zero-padded to 32 bytes:
    /// `Record13` uses only the suite's key length.
    fn secrets(&self) -> (u64, rustls::ConnectionTrafficSecrets) {
        use rustls::ConnectionTrafficSecrets as S;
        let (key, iv) = (rustls::crypto::cipher::AeadKey::from(self.key), rustls::crypto::cipher::Iv::new(self.iv));
        let s = match self.suite {
            0 => S::Aes128Gcm { key, iv },
            1 => S::Aes256Gcm { key, iv },
            _ => S::Chacha20Poly1305 { key, iv },
        };
        (self.seq, s)
    }
}

struct Fixture {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    _dir: tempfile_dir::Dir,
}

/// A private temporary directory (removed on drop), without a dev-dependency.
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rnd = [0u8; 8];
        let _ = getrandom::getrandom(&mut rnd);
        let dir = std::env::temp_dir().join(format!("ringgate-fuzz-{}", hex::encode(rnd)));
        std::fs::create_dir_all(&dir).expect("fuzz temp dir");
        let (server, certs) = crate::tls::build_server_config(&crate::config::TlsConfig::default(), &dir).expect("server TLS config");
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject as _;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&certs[0].path).expect("dev cert") {
            roots.add(c.expect("PEM")).expect("root");
        }
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.enable_secret_extraction = true;
        client.alpn_protocols = vec![b"ringgate/1".to_vec()];
        Fixture { server, client: Arc::new(client), _dir: tempfile_dir::Dir(dir) }
    })
}

fn handshake_in_memory() -> (rustls::ClientConnection, rustls::ServerConnection) {
    let f = fixture();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut c = rustls::ClientConnection::new(f.client.clone(), name).expect("client");
    let mut s = rustls::ServerConnection::new(f.server.clone()).expect("server");
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
        }
        s.process_new_packets().expect("server process");
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
        }
        c.process_new_packets().expect("client process");
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() && !c.wants_write() {
            break;
        }
    }
    (c, s)
}

/// The TLS 1.3 record layer's open path (after the hand-off): raw bytes
/// (mostly refused at the MAC) interleaved with records a real client
/// sealed, split at arbitrary points.
pub fn tls_record_open(data: &[u8]) {
    let (mut client, mut server) = record_pair();
    let mut wire = BytesMut::new();
    let mut plain = BytesMut::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let n = (op as usize >> 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if op & 1 == 0 {
            wire.extend_from_slice(chunk);
        } else {
            let mut p = BytesMut::from(chunk);
            client.seal_all(&mut p, &mut wire).expect("seal");
        }
        match server.open_all(&mut wire, &mut plain) {
            Ok(_) => {}
            Err(_) => return,
        }
        plain.clear();
    }
}

/// The connection glue (`Conn`) on a real socket pair, fed arbitrary bytes
/// before the TLS handshake (first byte even) or after a real handshake and
/// the hand-off to our record layer (first byte odd), as raw bytes and as
/// records sealed by the client. Frames that come out go through a session.
pub fn conn_glue(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else { return };
    let (mut peer, ours) = UnixStream::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("nonblocking");
    peer.set_nonblocking(true).expect("nonblocking");
    let lim = SessionLimits::default();
    let mut conn = Conn::new(ours.as_raw_fd(), Tls::Accepting(fixture().server.clone()), Session::new(0, &lim));
    let mut client = None;
    if mode & 1 == 1 {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut c = rustls::ClientConnection::new(fixture().client.clone(), name).expect("client");
        for _ in 0..20 {
            while c.wants_write() {
                if c.write_tls(&mut peer).is_err() {
                    break;
                }
            }
            if conn.read_available().is_err() {
                return;
            }
            let _ = conn.flush();
            let _ = c.read_tls(&mut peer);
            if c.process_new_packets().is_err() {
                return;
            }
            if !c.is_handshaking() && !conn.tls_handshaking() {
                break;
            }
        }
        assert!(!c.is_handshaking() && !conn.tls_handshaking(), "the in-memory handshake over the socket pair did not complete");
        assert!(matches!(conn.tls, Tls::Records(_)), "TLS 1.3 was not handed off to the record layer");
        client = Some(c);
    }
    let mut out = BytesMut::new();
    let mut session = Session::new(0, &lim);
    let mut sink = vec![0u8; 64 * 1024];
    for chunk in data.chunks(97) {
        let sealed = match (&mut client, chunk.first()) {
            (Some(c), Some(b)) if b % 2 == 0 => {
                let _ = c.writer().write_all(&chunk[1..]);
                let mut v = Vec::new();
                while c.wants_write() {
                    if c.write_tls(&mut v).is_err() {
                        break;
                    }
                }
                v
            }
            _ => chunk.to_vec(),
        };
        if peer.write_all(&sealed).is_err() {
            return;
        }
        let status = conn.read_available();
        // Keep the socket pair from filling up with what the server wrote.
        while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
        if status.is_err() {
            return;
        }
        for _ in 0..64 {
            match session.poll_frame(0, &lim, &mut conn.rbuf, &mut out) {
                Event::NeedMore | Event::Closed => break,
                _ => {}
            }
        }
        out.clear();
        if conn.flush().is_err() {
            return;
        }
    }
    drop(ours);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_accept_simple_inputs() {
        frame_decode(&[0, 0, 0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 1]);
        session(&[0x48, 0, 0, 0, 5, 7, 0, 0, 0, 0, 4, 5, 6, 255]);
        tls_record_open(&[0x21, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0x10, 0x17, 3, 3, 0, 40]);
        conn_glue(&[0, 0x16, 3, 1, 0, 5, 1, 2, 3]);
        conn_glue(&[1, 0, 0, 0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    /// The cached key material rebuilds working record layers: what one
    /// side seals the other opens, for every pair handed out (else the
    /// target would only ever exercise the MAC-failure path).
    #[test]
    fn cached_record_pairs_interoperate() {
        for round in 0..3u8 {
            let (mut client, mut server) = record_pair();
            let mut wire = BytesMut::new();
            client.seal_all(&mut BytesMut::from(&[round; 100][..]), &mut wire).unwrap();
            let mut plain = BytesMut::new();
            server.open_all(&mut wire, &mut plain).unwrap();
            assert_eq!(&plain[..], &[round; 100][..]);
            let mut back = BytesMut::new();
            server.seal_all(&mut BytesMut::from(&b"pong"[..]), &mut back).unwrap();
            let mut got = BytesMut::new();
            client.open_all(&mut back, &mut got).unwrap();
            assert_eq!(&got[..], b"pong");
        }
    }
}
