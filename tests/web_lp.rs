//! Long-poll sessions, the HTTP tunnel (`POST /v1/lp/connect`, `POST /v1/lp`), against the real server and a native TLS client: messages both ways, PUSHACK, replay and dedup, replacement by WebSocket and by TLS, one poll at a time, the poll timeout, the idle close, a closed session's last poll, CORS and the 400/404 cases of WEB.md. Two workers where the cross-core path matters.

mod common;
mod websess;

use std::time::{Duration, Instant};

use common::*;
use websess::*;

const APP: &str = "https://app.example.com";

/// `POST /v1/lp/connect`; returns the CONNACK and the sid.
fn lp_connect(server: &Server, tls: bool, user: &str, device: &str, last_seq: u64) -> (ConnAck, String) {
    let r = Http::open(server, tls).request("POST", "/v1/lp/connect", &[], &connect_frame(user, device, last_seq));
    assert_eq!(r.status, 200, "{r:?}");
    let f = r.frames();
    assert_eq!(f.len(), 1, "the CONNACK only: {f:?}");
    let Frame::ConnAck(ack) = &f[0] else { panic!("{f:?}") };
    assert_eq!(ack.status, 0);
    let sid = r.header("x-ringgate-session").expect("X-Ringgate-Session").to_string();
    assert!(sid.len() >= 22 && !sid.contains('='));
    (ack.clone(), sid)
}

/// One poll on a fresh connection (so it may cross cores).
fn poll(server: &Server, tls: bool, sid: &str, body: &[u8]) -> Resp {
    Http::open(server, tls).request("POST", &format!("/v1/lp?sid={sid}"), &[], body)
}

/// Polls until `n` frames came (several polls may be needed).
fn poll_frames(server: &Server, tls: bool, sid: &str, n: usize) -> Vec<Frame> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        assert!(Instant::now() < deadline, "only {got:?}");
        let r = poll(server, tls, sid, b"");
        match r.status {
            200 => got.extend(r.frames()),
            204 => {}
            s => panic!("poll answered {s}"),
        }
    }
    got
}

#[test]
fn messages_both_ways_ack_and_cors_across_cores() {
    let server = Config::default().workers(2).set("web", format!("allowed_origins = [\"{APP}\"]")).start();
    let (mut bob, _) = server.login("bob", "phone", 0);
    // Connect from an allowed foreign origin: CORS headers, the sid exposed.
    let r = Http::open(&server, true).request("POST", "/v1/lp/connect", &[("Origin", APP)], &connect_frame("alice", "web", 0));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Ringgate-Session"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let sid = r.header("x-ringgate-session").unwrap().to_string();

    // A poll waits for the push (the poll is open before bob sends).
    let mut h = Http::open(&server, true);
    h.send("POST", &format!("/v1/lp?sid={sid}"), &[("Origin", APP)], b"");
    std::thread::sleep(Duration::from_millis(100));
    bob.send_ok(1, "alice", b"hi");
    let r = h.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP), "CORS on a held poll's answer");
    match &r.frames()[..] {
        [Frame::Push(p)] => assert_eq!((p.seq, &p.payload[..]), (1, &b"hi"[..])),
        f => panic!("{f:?}"),
    }
    // Frames queued before a poll are returned at once.
    bob.send_ok(2, "alice", b"two");
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let f = poll_frames(&server, true, &sid, 1);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(matches!(&f[..], [Frame::Push(p)] if p.seq == 2), "{f:?}");

    // PUSHACK and SEND in one poll body; the SENDACK comes back on a poll.
    let body = frames(&[Frame::PushAck { seq: 2 }, send_to_user(5, "bob", b"back")]);
    let r = poll(&server, true, &sid, &body);
    let mut got = if r.status == 200 { r.frames() } else { Vec::new() };
    if got.is_empty() {
        got = poll_frames(&server, true, &sid, 1);
    }
    assert!(matches!(&got[..], [Frame::SendAck(a)] if a.client_msg_id == 5 && a.status == 0), "{got:?}");
    bob.expect_push_seq(1, b"back");
    // Acked: no retransmission of 1 or 2 (ack_timeout is 5 s by default; a
    // PING round trip shows the queue holds nothing else).
    for n in 0..8 {
        let f = {
            let r = poll(&server, true, &sid, &Frame::Ping { nonce: n }.encode());
            assert_eq!(r.status, 200);
            r.frames()
        };
        assert!(matches!(&f[..], [Frame::Pong { nonce }] if *nonce == n), "{f:?}");
    }
    // A foreign origin: 403, no CORS headers.
    let r = Http::open(&server, true).request("POST", &format!("/v1/lp?sid={sid}"), &[("Origin", "https://evil.example")], b"");
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    // The device's DISCONNECT: 204, then the sid is gone.
    assert_eq!(poll(&server, true, &sid, &Frame::Disconnect { reason: 0, message: String::new() }.encode()).status, 204);
    assert_eq!(poll(&server, true, &sid, b"").status, 404);
    server.assert_no_panic();
}

#[test]
fn replay_and_dedup_on_plain_http() {
    let server = Config::default().tls(false).start();
    let mut bob = Client::connect_plain(server.addr()).unwrap();
    bob.login("bob", "phone", 0);
    bob.send_ok(1, "alice", b"one");
    bob.send_ok(2, "alice", b"two");
    let (ack, sid) = lp_connect(&server, false, "alice", "web", 1);
    assert_eq!(ack.head_seq, 2);
    let f = poll_frames(&server, false, &sid, 1);
    assert!(matches!(&f[..], [Frame::Push(p)] if p.seq == 2 && p.is_redelivery()), "{f:?}");
    let body = frames(&[Frame::PushAck { seq: 2 }, send_to_user(9, "bob", b"once")]);
    let r = poll(&server, false, &sid, &body);
    let got = if r.status == 200 { r.frames() } else { poll_frames(&server, false, &sid, 1) };
    let Frame::SendAck(first) = &got[0] else { panic!("{got:?}") };
    bob.expect_push_seq(1, b"once");
    // A new session of the device (reconnect) retries the same SEND: deduplicated.
    let (_, sid2) = lp_connect(&server, false, "alice", "web", 2);
    assert_eq!(poll(&server, false, &sid, b"").status, 200, "the replaced session's last poll: its DISCONNECT");
    let r = poll(&server, false, &sid2, &send_to_user(9, "bob", b"once").encode());
    let got = if r.status == 200 { r.frames() } else { poll_frames(&server, false, &sid2, 1) };
    assert!(matches!(&got[..], [Frame::SendAck(a)] if a.msg_id == first.msg_id), "{got:?}");
    bob.expect_silence(Duration::from_millis(300));
    server.assert_no_panic();
}

#[test]
fn replaced_by_websocket_and_by_tls() {
    let server = Config::default().workers(2).start();
    let (_, sid) = lp_connect(&server, true, "carol", "dev", 0);
    // A WebSocket login of the same device replaces the long-poll session.
    let req = tungstenite::client::IntoClientRequest::into_client_request(format!("wss://localhost:{}/v1/ws", server.addr().port())).unwrap();
    let (mut ws, _) = tungstenite::client(req, stream(&server, true)).unwrap();
    ws.send(tungstenite::Message::Binary(Frame::Connect(Connect::new(token("carol"), "dev", 0)).encode())).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline);
        match ws.read() {
            Ok(tungstenite::Message::Binary(b)) => {
                assert!(matches!(Frame::decode(b[4], &b[5..]).unwrap(), Frame::ConnAck(ConnAck { status: 0, .. })));
                break;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
    // The closed session keeps its sid for one more poll: its DISCONNECT 6.
    let f = poll_frames(&server, true, &sid, 1);
    assert!(matches!(&f[..], [Frame::Disconnect { reason: 6, .. }]), "{f:?}");
    assert_eq!(poll(&server, true, &sid, b"").status, 404);

    // An open poll gets the DISCONNECT at once when a TLS login replaces it.
    let (_, sid) = lp_connect(&server, true, "dan", "dev", 0);
    let mut h = Http::open(&server, true);
    h.send("POST", &format!("/v1/lp?sid={sid}"), &[], b"");
    std::thread::sleep(Duration::from_millis(100));
    let (mut tls, _) = server.login("dan", "dev", 0);
    let r = h.response();
    assert!(matches!(&r.frames()[..], [Frame::Disconnect { reason: 6, .. }]), "{r:?}");
    assert_eq!(poll(&server, true, &sid, b"").status, 404);
    tls.ping_pong(1);
    server.assert_no_panic();
}

#[test]
fn one_poll_at_a_time_and_poll_timeout() {
    let server = Config::default().set("web", "poll_timeout_s = 1").start();
    let (_, sid) = lp_connect(&server, true, "erin", "web", 0);
    let mut older = Http::open(&server, true);
    older.send("POST", &format!("/v1/lp?sid={sid}"), &[], b"");
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let mut newer = Http::open(&server, true);
    newer.send("POST", &format!("/v1/lp?sid={sid}"), &[], b"");
    // The newer poll ends the older one with 204 at once...
    assert_eq!(older.response().status, 204);
    assert!(t.elapsed() < Duration::from_millis(800), "{:?}", t.elapsed());
    // ...and itself ends with 204 after web.poll_timeout_s.
    assert_eq!(newer.response().status, 204);
    let held = t.elapsed();
    assert!(held >= Duration::from_millis(900) && held < Duration::from_secs(4), "{held:?}");
    // The keep-alive connection serves the next poll.
    newer.send("POST", &format!("/v1/lp?sid={sid}"), &[], &Frame::Ping { nonce: 3 }.encode());
    assert!(matches!(&newer.response().frames()[..], [Frame::Pong { nonce: 3 }]));
    server.assert_no_panic();
}

#[test]
fn idle_close_then_last_poll_then_404() {
    let server = Config::default().heartbeat_s(1).set("web", "poll_timeout_s = 1").start();
    let (_, sid) = lp_connect(&server, true, "fay", "web", 0);
    // Polls in a row keep it alive well past 2.5 × heartbeat.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(3500) {
        assert_eq!(poll(&server, true, &sid, b"").status, 204);
    }
    // Then no poll: DISCONNECT 5, kept for one more poll.
    std::thread::sleep(Duration::from_millis(3000));
    let f = poll_frames(&server, true, &sid, 1);
    assert!(matches!(&f[..], [Frame::Disconnect { reason: 5, .. }]), "{f:?}");
    assert_eq!(poll(&server, true, &sid, b"").status, 404);
    server.assert_no_panic();
}

#[test]
fn bad_requests() {
    let server = Config::default().start();
    assert_eq!(poll(&server, true, "AAAAAAAAAAAAAAAAAAAAAAA", b"").status, 404);
    assert_eq!(poll(&server, true, "bad", b"").status, 404);
    // Not exactly one CONNECT: 400.
    let c = connect_frame("gus", "web", 0);
    for body in [Vec::new(), [c.clone(), c.clone()].concat(), c[..c.len() - 1].to_vec(), Frame::Ping { nonce: 1 }.encode()] {
        let r = Http::open(&server, true).request("POST", "/v1/lp/connect", &[], &body);
        assert_eq!(r.status, 400, "{body:?}");
    }
    // A bad token: 200 with the refusing CONNACK and no sid.
    let r = Http::open(&server, true).request("POST", "/v1/lp/connect", &[], &Frame::Connect(Connect::new("x.y.z", "web", 0)).encode());
    assert_eq!(r.status, 200);
    assert!(r.header("x-ringgate-session").is_none());
    assert!(matches!(&r.frames()[..], [Frame::ConnAck(ConnAck { status: connack::BAD_TOKEN, .. })]));
    // A chunked poll body is accepted.
    let (_, sid) = lp_connect(&server, true, "gus", "web", 0);
    let mut h = Http::open(&server, true);
    let ping = Frame::Ping { nonce: 8 }.encode();
    let mut raw = format!("POST /v1/lp?sid={sid} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", 3).into_bytes();
    raw.extend_from_slice(&ping[..3]);
    raw.extend_from_slice(format!("\r\n{:x}\r\n", ping.len() - 3).as_bytes());
    raw.extend_from_slice(&ping[3..]);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    h.send_raw(&raw);
    assert!(matches!(&h.response().frames()[..], [Frame::Pong { nonce: 8 }]));
    // CONNECT in a poll: 400, DISCONNECT(1) for the next poll, then 404.
    assert_eq!(poll(&server, true, &sid, &c).status, 400);
    let f = poll_frames(&server, true, &sid, 1);
    assert!(matches!(&f[..], [Frame::Disconnect { reason: 1, .. }]), "{f:?}");
    assert_eq!(poll(&server, true, &sid, b"").status, 404);
    assert_eq!(Http::open(&server, true).request("GET", "/v1/lp/connect", &[], b"").status, 405);
    server.assert_no_panic();
}

/// `web.deflate = true` is refused at startup (permessage-deflate is not
/// implemented), with the key named; `web.poll_timeout_s = 0` too.
#[test]
fn deflate_and_zero_poll_timeout_refused_at_startup() {
    for (line, key) in [("deflate = true", "web.deflate"), ("poll_timeout_s = 0", "web.poll_timeout_s")] {
        let dir = tempfile::tempdir().unwrap();
        match Server::spawn(&Config::default().set("web", line), dir.path()) {
            Ok((mut c, _, _)) => {
                let _ = c.kill();
                panic!("started with {line}");
            }
            Err(why) => assert!(why.contains(key), "{why}"),
        }
    }
}
