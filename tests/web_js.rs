//! `clients/js/ringgate.js` against the real server over WebSocket, driven
//! by Node (`--experimental-websocket`), with a native client as the peer:
//! replay of what was sent while offline, a live message, a SEND answered
//! by SENDACK 0 and delivered.
//! Skipped with a message when `node` is not installed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use common::*;

#[test]
fn js_client_over_websocket() {
    // Node 20 needs the flag for a global WebSocket; older ones lack it.
    let ok = Command::new("node")
        .args(["--experimental-websocket", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("no node with a global WebSocket (Node >= 20): ringgate.js test skipped");
        return;
    }
    let server = Config::default().tls(false).start();
    let (mut bob, _) = server.login("bob", "phone", 0);
    bob.send_ok(1, "alice", b"while offline");
    let url = format!("http://127.0.0.1:{}", server.addr().port());
    let mut child = Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "clients/js/test/node_ws.mjs", &url, &token("alice"), "bob"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("a line from node").unwrap();
    assert_eq!(next(), "state connecting");
    assert_eq!(next(), "state up 0");
    assert_eq!(next(), "push 1 bob while offline");
    bob.send_ok(2, "alice", b"live");
    assert_eq!(next(), "push 2 bob live");
    assert_eq!(next(), "sendack 0");
    bob.expect_push_seq(1, b"from js");
    assert!(child.wait().unwrap().success());
    server.assert_no_panic();
}

/// Every transport refused (here by a server that answers 403 to every
/// request, as the gateway does for a foreign origin): the client ends in
/// `failed` with a reason naming the checks, instead of looping on
/// connecting/down.
#[test]
fn js_client_fails_with_a_reason_when_every_transport_is_refused() {
    let ok = Command::new("node")
        .args(["--experimental-websocket", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("no node with a global WebSocket (Node >= 20): ringgate.js test skipped");
        return;
    }
    let refuser = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = refuser.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for c in refuser.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\norigin not allowed\n");
        }
    });
    let o = Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "clients/js/test/node_refused.mjs", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let failed = out.lines().find(|l| l.starts_with("failed ")).unwrap_or_else(|| panic!("no failed state:\n{out}"));
    assert!(failed.contains("3 times in a row") && failed.contains("web.allowed_origins") && failed.contains("HTTP 403"), "{failed}");
    assert!(out.contains("send rejected"), "pending sends are rejected: {out}");
    assert!(out.lines().filter(|l| *l == "down").count() >= 3, "{out}");
}
