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
