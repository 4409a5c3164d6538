//! The `Server` handle: a gateway started in this process reports its phases — starting, listening with both bound addresses, draining, stopped — and `shutdown` drains it as SIGTERM does, without any log line read.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Connect, Frame};
use ringgate::runtime::server::{Phase, Server};

fn read_frame(s: &mut TcpStream) -> Frame {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("frame length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("frame body");
    Frame::decode(body[0], &body[1..]).expect("frame decodes")
}

/// One server per process (metrics are process-wide): the whole life in one test.
#[test]
fn phases_from_start_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let toml = common::Config::default().tls(false).to_toml(&dir.path().join("data"));
    let cfg = ringgate::config::Config::from_toml_str(&toml).expect("config parses");
    let server = Server::start(cfg);
    let bound = server.wait_listening(common::STARTUP).expect("listening");
    assert_eq!(server.phase(), Phase::Listening(bound));
    assert_ne!(bound.gateway.port(), 0, "the bound port, not the configured 0");
    assert_ne!(bound.admin.port(), 0);

    // Both addresses serve: a session on the gateway, health on the admin port.
    let mut c = TcpStream::connect(bound.gateway).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&Frame::Connect(Connect::new(common::token("alice"), "d1", 0)).encode()).unwrap();
    assert!(matches!(read_frame(&mut c), Frame::ConnAck(ref a) if a.status == 0));
    let mut a = TcpStream::connect(bound.admin).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    a.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    a.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Shutdown: the connected device is told DISCONNECT 7 (shutting down),
    // then the server stops with Ok and its port is free again.
    server.shutdown();
    match read_frame(&mut c) {
        Frame::Disconnect { reason, .. } => assert_eq!(reason, 7),
        f => panic!("expected DISCONNECT, got {f:?}"),
    }
    assert!(matches!(server.phase(), Phase::Draining | Phase::Stopped(_)), "{:?}", server.phase());
    assert_eq!(server.wait_stopped(Duration::from_secs(30)), Some(Ok(())));
    std::net::TcpListener::bind(bound.gateway).expect("the gateway port is released");
}
