//! `GET /v1/route` on the gateway port against the real server: the signed
//! payload and the key file, HTTP detection (ALPN `http/1.1`, or no ALPN and
//! a letter first), keep-alive, the error answers, the Origin policy, plain
//! TCP, feedback demotion, and `ringgate route`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use common::*;
use rustls::pki_types::ServerName;

/// A blocking HTTP/1.1 connection (TLS with a chosen ALPN, or plain).
struct Http {
    io: Box<dyn ReadWrite>,
    buf: Vec<u8>,
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn tls(addr: SocketAddr, cert: &Path, alpn: Option<&[u8]>) -> (Http, Option<Vec<u8>>) {
        let mut cfg = (*tls_config(cert, TlsOptions { alpn: false, ..TlsOptions::default() })).clone();
        if let Some(a) = alpn {
            cfg.alpn_protocols = vec![a.to_vec()];
        }
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap()).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        let chosen = conn.alpn_protocol().map(|p| p.to_vec());
        (Http { io: Box::new(rustls::StreamOwned::new(conn, sock)), buf: Vec::new() }, chosen)
    }

    fn plain(addr: SocketAddr) -> Http {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        Http { io: Box::new(sock), buf: Vec::new() }
    }

    fn send(&mut self, raw: &str) {
        self.io.write_all(raw.as_bytes()).unwrap();
        self.io.flush().unwrap();
    }

    fn get(&mut self, path: &str, extra: &str) -> Resp {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n"));
        self.response().expect("a response")
    }

    /// Reads one response (Content-Length framed); None on EOF before one.
    fn response(&mut self) -> Option<Resp> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let hs: Vec<(String, String)> =
                    r.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).to_string())).collect();
                let len: usize = hs.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= n + len {
                    let status = r.code.unwrap();
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Some(Resp { status, headers: hs, body });
                }
            }
            assert!(Instant::now() < deadline, "no complete response within {WAIT:?}: {:?}", String::from_utf8_lossy(&self.buf));
            let mut chunk = [0u8; 4096];
            match self.io.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// True when the server closed the connection (EOF) within WAIT.
    fn closed(&mut self) -> bool {
        self.response().is_none()
    }
}

/// Checks the envelope with the key from `route-key.pub` and returns the payload.
fn verified_payload(body: &[u8], data_dir: &Path) -> serde_json::Value {
    let pub_hex = std::fs::read_to_string(data_dir.join("route-key.pub")).unwrap();
    assert_eq!(pub_hex.len(), 65, "64 hex characters and a newline: {pub_hex:?}");
    assert!(pub_hex.ends_with('\n'));
    let key = hex::decode(pub_hex.trim()).unwrap();
    let env: serde_json::Value = serde_json::from_slice(body).unwrap();
    let payload = env["payload"].as_str().expect("payload is a JSON string");
    let sig = base64::engine::general_purpose::STANDARD.decode(env["sig"].as_str().unwrap()).unwrap();
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &key)
        .verify(payload.as_bytes(), &sig)
        .expect("signature verifies with route-key.pub");
    let id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key);
    assert_eq!(env["key_id"].as_str().unwrap(), hex::encode(&id.as_ref()[..8]));
    serde_json::from_str(payload).unwrap()
}

fn ids(p: &serde_json::Value) -> Vec<String> {
    p["endpoints"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn signed_route_over_alpn_http_and_key_survives_restart() {
    let mut s = Config::default().start();
    let (mut h, alpn) = Http::tls(s.addr(), s.cert_path(), Some(b"http/1.1"));
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "the server offers http/1.1");
    let r = h.get("/v1/route", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let p = verified_payload(&r.body, &s.data_dir());
    assert_eq!(p["version"], 1);
    assert_eq!(p["ttl_s"], 3600);
    assert_eq!(p["refresh_ratio"], 0.75);
    assert_eq!(p["ladder"]["stagger_ms"], 3000);
    assert_eq!(p["backoff"]["jitter"], 0.5);
    // No endpoints configured: this node, at its listen address.
    let e = &p["endpoints"][0];
    assert_eq!(e["id"], "self");
    assert_eq!(e["transport"], "tls");
    assert_eq!(e["addr"], "127.0.0.1");
    assert_eq!(e["port"].as_u64(), Some(u64::from(s.addr().port())));
    assert!(s.stderr_tail().contains("route public key"), "{}", s.stderr_tail());
    let before = std::fs::read_to_string(s.data_dir().join("route-key.pub")).unwrap();
    s.restart();
    let after = std::fs::read_to_string(s.data_dir().join("route-key.pub")).unwrap();
    assert_eq!(before, after, "the key is created once and reused");
}

#[test]
fn no_alpn_letter_first_is_http_with_keepalive_and_errors() {
    let s = Config::default().start();
    let (mut h, alpn) = Http::tls(s.addr(), s.cert_path(), None);
    assert_eq!(alpn, None);
    // Several requests on one connection (keep-alive).
    assert_eq!(h.get("/v1/route?user=alice&transports=tls", "").status, 200);
    assert_eq!(h.get("/nope", "").status, 404);
    h.send("POST /v1/route HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc");
    let r = h.response().unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = h.get("/v1/route", "Connection: close\r\n");
    assert_eq!(r.status, 200);
    assert!(h.closed(), "Connection: close is honoured");

    // HTTP/1.0 and HTTP/2 request lines: 505.
    let (mut h, _) = Http::tls(s.addr(), s.cert_path(), None);
    h.send("GET /v1/route HTTP/1.0\r\n\r\n");
    assert_eq!(h.response().unwrap().status, 505);
    // A head over 16 KiB: 431, then closed.
    let (mut h, _) = Http::tls(s.addr(), s.cert_path(), None);
    h.send(&format!("GET /v1/route HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n", "a".repeat(17 * 1024)));
    assert_eq!(h.response().unwrap().status, 431);
    assert!(h.closed());
    // Frames still work on the same port without ALPN.
    let (mut c, ack) = s.login("alice", "d1", 0);
    assert_eq!(ack.status, 0);
    c.ping_pong(7);
    s.assert_no_panic();
}

/// An HTTP connection must complete its first head within the handshake
/// timeout, and an idle keep-alive connection closes after
/// `web.keepalive_idle_s`.
#[test]
fn http_timeouts() {
    let s = Config::default().handshake_timeout_ms(500).extra("[web]\nkeepalive_idle_s = 1").start();
    let (mut h, _) = Http::tls(s.addr(), s.cert_path(), Some(b"http/1.1"));
    h.send("GET /v1/route HTTP/1.1\r\n");
    let t = Instant::now();
    assert!(h.closed(), "a head that never completes is closed");
    assert!(t.elapsed() < WAIT);
    let (mut h, _) = Http::tls(s.addr(), s.cert_path(), Some(b"http/1.1"));
    assert_eq!(h.get("/v1/route", "").status, 200);
    // Past the handshake timeout, within the keep-alive: still served.
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(h.get("/v1/route", "").status, 200);
    let t = Instant::now();
    assert!(h.closed(), "idle keep-alive connection closed");
    assert!(t.elapsed() >= std::time::Duration::from_millis(700), "closed after {:?}, before the 1 s keep-alive", t.elapsed());
}

/// Many pipelined requests in one write are all answered, in order, even
/// past the output high-water mark.
#[test]
fn pipelined_requests_are_all_answered() {
    let s = Config::default().start();
    let (mut h, _) = Http::tls(s.addr(), s.cert_path(), None);
    let n = 300;
    let mut burst = String::new();
    for i in 0..n {
        let path = if i % 2 == 0 { "/v1/route" } else { "/other" };
        burst += &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    }
    h.send(&burst);
    for i in 0..n {
        let r = h.response().unwrap_or_else(|| panic!("response {i} missing"));
        assert_eq!(r.status, if i % 2 == 0 { 200 } else { 404 }, "response {i}");
    }
    s.assert_no_panic();
}

#[test]
fn origin_policy() {
    let s = Config::default().extra("[web]\nallowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]").start();
    let (mut h, _) = Http::tls(s.addr(), s.cert_path(), Some(b"http/1.1"));
    let r = h.get("/v1/route", "Origin: https://evil.example.com\r\n");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = h.get("/v1/route", "Origin: https://app.example.com\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Ringgate-Session"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // 4xx to an allowed origin carries the headers too.
    let r = h.get("/elsewhere", "Origin: https://a.example.org\r\n");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://a.example.org"));
    // Same origin needs no listing; null is refused unless listed.
    let port = s.addr().port();
    h.send(&format!("GET /v1/route HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: https://localhost:{port}\r\n\r\n"));
    let r = h.response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(h.get("/v1/route", "Origin: null\r\n").status, 403);
    // Preflight.
    h.send("OPTIONS /v1/route HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\n\r\n");
    let r = h.response().unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
}

#[test]
fn plain_tcp_listener_detects_http_by_first_byte() {
    let s = Config::default().tls(false).start();
    let mut h = Http::plain(s.addr());
    let r = h.get("/v1/route", "");
    assert_eq!(r.status, 200);
    let p = verified_payload(&r.body, &s.data_dir());
    assert_eq!(p["endpoints"][0]["transport"], "tcp");
    let (_c, ack) = s.login("bob", "d", 0);
    assert_eq!(ack.status, 0);
}

#[test]
fn failure_reports_demote_and_order_holds() {
    let s = Config::default()
        .extra(
            r#"[route]
ttl_s = 60
[[route.endpoints]]
id = "a"
transport = "tls"
host = "a.example.com"
addr = "192.0.2.1"
port = 7443
[[route.endpoints]]
id = "b"
transport = "tls"
host = "b.example.com"
port = 7443
priority = 1
[[route.endpoints]]
id = "c"
transport = "wss"
host = "c.example.com"
port = 443
priority = 1
weight = 200
"#,
        )
        .start();
    let (mut h, _) = Http::tls(s.addr(), s.cert_path(), Some(b"http/1.1"));
    let p = verified_payload(&h.get("/v1/route", "").body, &s.data_dir());
    assert_eq!(ids(&p), ["a", "c", "b"], "priority, then weight");
    assert_eq!(p["endpoints"][0]["sni"], "a.example.com", "sni defaults to host");
    assert_eq!(p["endpoints"][0]["addr"], "192.0.2.1");
    let p = verified_payload(&h.get("/v1/route?transports=tls", "").body, &s.data_dir());
    assert_eq!(ids(&p), ["a", "b"]);
    // 2 observations so far; three failure reports make 3 of 5.
    for _ in 0..2 {
        let p = verified_payload(&h.get("/v1/route?failed=a,unknown", "").body, &s.data_dir());
        assert_eq!(ids(&p)[0], "a", "not yet demoted");
    }
    let p = verified_payload(&h.get("/v1/route?failed=a", "").body, &s.data_dir());
    assert_eq!(ids(&p), ["c", "b", "a"], "a is demoted after all others");
}

#[test]
fn route_cli_prints_what_the_endpoint_answers() {
    let s = Config::default().start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["route", "--config"])
        .arg(s.dir().join("ringgate.toml"))
        .args(["--query", "transports=tls"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = verified_payload(&out.stdout, &s.data_dir());
    assert_eq!(ids(&p), ["self"]);
}
