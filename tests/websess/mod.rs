//! A small hand-written HTTP/1.1 client for the SSE and long-poll tests: requests over TLS (ALPN `http/1.1`) or plain TCP, responses with Content-Length or none, and an SSE event reader over a chunked stream.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::ServerName;

use crate::common::*;

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A socket to the gateway port: TLS with ALPN `http/1.1`, or plain TCP.
pub fn stream(server: &Server, tls: bool) -> Box<dyn ReadWrite> {
    let mut sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    sock.set_nodelay(true).unwrap();
    if !tls {
        return Box::new(sock);
    }
    let mut cfg = (*tls_config(server.cert_path(), TlsOptions { alpn: false, ..TlsOptions::default() })).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    Box::new(rustls::StreamOwned::new(conn, sock))
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The frames of a long-poll body.
    pub fn frames(&self) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut b = &self.body[..];
        while !b.is_empty() {
            let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
            out.push(Frame::decode(b[4], &b[5..4 + len]).unwrap());
            b = &b[4 + len..];
        }
        out
    }
}

/// One SSE event (or comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    pub comment: bool,
}

impl Event {
    pub fn frame(&self) -> Frame {
        assert_eq!(self.event.as_deref(), Some("frame"), "{self:?}");
        let b = base64::engine::general_purpose::STANDARD.decode(&self.data).unwrap();
        let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, b.len(), "one event = one frame");
        Frame::decode(b[4], &b[5..]).unwrap()
    }
}

pub struct Http {
    s: Box<dyn ReadWrite>,
    buf: Vec<u8>,
    /// Decoded SSE text not yet parsed into events.
    text: String,
    /// The chunked stream ended (last chunk).
    pub ended: bool,
    pub closed: bool,
}

impl Http {
    pub fn open(server: &Server, tls: bool) -> Http {
        Http { s: stream(server, tls), buf: Vec::new(), text: String::new(), ended: false, closed: false }
    }

    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        if method == "POST" {
            req += &format!("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n", body.len());
        }
        req += "\r\n";
        let mut all = req.into_bytes();
        all.extend_from_slice(body);
        self.s.write_all(&all).unwrap();
        self.s.flush().unwrap();
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
        self.s.flush().unwrap();
    }

    /// Reads more bytes; false on timeout of this read, panics past `deadline`.
    fn fill(&mut self, deadline: Instant) -> bool {
        assert!(Instant::now() < deadline, "nothing from the server in time; have {:?}", String::from_utf8_lossy(&self.buf));
        let mut tmp = [0u8; 16384];
        match self.s.read(&mut tmp) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => false,
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// The next response head, and its Content-Length body (none for 204 or a chunked stream).
    pub fn response_within(&mut self, wait: Duration) -> Resp {
        let deadline = Instant::now() + wait;
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if self.closed {
                panic!("closed before a response; have {:?}", String::from_utf8_lossy(&self.buf));
            }
            self.fill(deadline);
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let mut r = Resp { status, headers, body: Vec::new() };
        if let Some(n) = r.header("content-length").map(|v| v.parse::<usize>().unwrap()) {
            while self.buf.len() < n {
                assert!(!self.closed, "closed inside a body");
                self.fill(deadline);
            }
            r.body = self.buf.drain(..n).collect();
        }
        r
    }

    pub fn response(&mut self) -> Resp {
        self.response_within(WAIT)
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.send(method, path, headers, body);
        self.response()
    }

    /// Moves complete chunks from `buf` to `text`.
    fn dechunk(&mut self) {
        loop {
            let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") else { return };
            let n = usize::from_str_radix(std::str::from_utf8(&self.buf[..p]).unwrap(), 16).unwrap();
            if n == 0 {
                if self.buf.len() >= p + 4 {
                    self.ended = true;
                    self.buf.drain(..p + 4);
                }
                return;
            }
            if self.buf.len() < p + 2 + n + 2 {
                return;
            }
            let chunk = String::from_utf8(self.buf[p + 2..p + 2 + n].to_vec()).unwrap();
            assert_eq!(&self.buf[p + 2 + n..p + 4 + n], b"\r\n");
            self.text.push_str(&chunk);
            self.buf.drain(..p + 4 + n);
        }
    }

    /// The next SSE event or comment within `wait`; None when the stream ended.
    pub fn event_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = Instant::now() + wait;
        loop {
            self.dechunk();
            if let Some(p) = self.text.find("\n\n") {
                let block: String = self.text.drain(..p + 2).collect();
                let mut ev = Event { event: None, id: None, data: String::new(), comment: false };
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        ev.comment = true;
                        ev.data = c.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = v.to_string();
                    } else if line == "id:" {
                        ev.id = Some(String::new());
                    }
                }
                return Some(ev);
            }
            if self.ended || self.closed {
                return None;
            }
            self.fill(deadline);
        }
    }

    /// The next event that is not a comment.
    pub fn event(&mut self) -> Option<Event> {
        loop {
            match self.event_within(WAIT) {
                Some(e) if e.comment => continue,
                other => return other,
            }
        }
    }

    pub fn frame_event(&mut self) -> (Event, Frame) {
        let e = self.event().expect("stream ended where a frame event was expected");
        let f = e.frame();
        (e, f)
    }

    /// Waits for the server to close the connection.
    pub fn expect_closed(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while !self.closed {
            self.fill(deadline);
        }
    }
}

pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn connect_frame(user: &str, device: &str, last_seq: u64) -> Vec<u8> {
    Frame::Connect(Connect::new(token(user), device, last_seq)).encode()
}

pub fn frames(fs: &[Frame]) -> Vec<u8> {
    fs.iter().flat_map(|f| f.encode()).collect()
}
