//! SSE + POST sessions (`GET /v1/sse`, `POST /v1/send`) against the real server and a native TLS client: messages both ways, PUSHACK, replay and Last-Event-ID resume, dedup of a retried SEND, replacement across transports, the idle close, pings, CORS and the Origin policy, and the 400/404 cases of WEB.md. Two workers where the cross-core path (a POST reaching the core that holds the session) matters.

mod common;
mod websess;

use std::time::{Duration, Instant};

use common::*;
use websess::*;

const APP: &str = "https://app.example.com";

fn allow_app(c: Config) -> Config {
    c.set("web", format!("allowed_origins = [\"{APP}\"]"))
}

/// Opens an SSE session; returns the stream, the CONNACK and the sid.
fn sse_open(server: &Server, tls: bool, user: &str, device: &str, last_seq: u64, extra: &[(&str, &str)]) -> (Http, ConnAck, String) {
    let mut h = Http::open(server, tls);
    let path = format!("/v1/sse?connect={}", b64url(&connect_frame(user, device, last_seq)));
    let r = h.request("GET", &path, extra, b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert!(r.header("content-length").is_none());
    let (e, f) = h.frame_event();
    assert!(e.id.is_none(), "no id on a CONNACK: {e:?}");
    let Frame::ConnAck(ack) = f else { panic!("first event {f:?}") };
    assert_eq!(ack.status, 0);
    let s = h.event().unwrap();
    assert_eq!(s.event.as_deref(), Some("session"), "{s:?}");
    assert!(s.id.is_none());
    assert!(s.data.len() >= 22 && !s.data.contains('='), "sid {:?}", s.data);
    (h, ack, s.data)
}

/// POSTs frames for `sid` on a fresh connection (so, with two workers, it
/// often lands on the other core and must move to the session's).
fn post(server: &Server, tls: bool, sid: &str, body: &[u8], extra: &[(&str, &str)]) -> Resp {
    Http::open(server, tls).request("POST", &format!("/v1/send?sid={sid}"), extra, body)
}

fn push_event(h: &mut Http) -> (Event, Push) {
    match h.frame_event() {
        (e, Frame::Push(p)) => (e, p),
        (_, f) => panic!("expected PUSH, got {f:?}"),
    }
}

#[test]
fn messages_both_ways_ack_ping_and_cors_across_cores() {
    let mut cfg = allow_app(Config::default().workers(2));
    cfg.env.push(("RUST_LOG".into(), "info,ringgate::runtime::core::sessions=debug".into()));
    let server = cfg.start();
    let origin = [("Origin", APP)];
    let (mut sse, ack, sid) = sse_open(&server, true, "alice", "browser", 0, &origin);
    assert_eq!(ack.user_id, "alice");
    let (mut bob, _) = server.login("bob", "phone", 0);

    for i in 1..=4u64 {
        bob.send_ok(i, "alice", format!("m{i}").as_bytes());
        let (e, p) = push_event(&mut sse);
        assert_eq!(e.id.as_deref(), Some(i.to_string().as_str()), "id: <seq> on PUSH");
        assert_eq!((p.seq, p.from.as_str(), p.payload.clone()), (i, "bob", format!("m{i}").into_bytes()));
        // Each POST on a new connection: across 4 of them both cores serve one.
        let r = post(&server, true, &sid, &Frame::PushAck { seq: i }.encode(), &origin);
        assert_eq!(r.status, 204, "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert_eq!(r.header("vary"), Some("Origin"));
        assert_eq!(r.header("access-control-expose-headers"), Some("X-Ringgate-Session"));
        assert!(r.header("access-control-allow-credentials").is_none());
    }
    for n in 100..110 {
        assert_eq!(post(&server, true, &sid, &Frame::Ping { nonce: n }.encode(), &[]).status, 204);
        assert!(matches!(sse.frame_event().1, Frame::Pong { nonce } if nonce == n));
    }
    // Some of those POSTs reached the session through the other core.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !server.stderr_tail().contains("moved to the session's core") {
        assert!(Instant::now() < deadline, "no request crossed cores (chance 2^-15 with 15 requests)");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Acked: nothing is retransmitted.
    bob.expect_silence(Duration::from_millis(200));

    // Several frames in one POST, processed in order; answers on the stream.
    let body = frames(&[send_to_user(7, "bob", b"back"), Frame::Ping { nonce: 5 }]);
    assert_eq!(post(&server, true, &sid, &body, &[]).status, 204);
    // The SENDACK waits for the recipient's core, so the PONG may pass it.
    let (mut acked, mut ponged) = (false, false);
    while !(acked && ponged) {
        match sse.frame_event() {
            (e, Frame::SendAck(a)) => {
                assert!(e.id.is_none());
                assert_eq!((a.client_msg_id, a.status), (7, 0));
                acked = true;
            }
            (_, Frame::Pong { nonce: 5 }) => ponged = true,
            (_, f) => panic!("expected SENDACK and PONG, got {f:?}"),
        }
    }
    bob.expect_push_seq(1, b"back");

    // Preflight from the allowed origin; a foreign origin gets 403, no CORS.
    let r = Http::open(&server, true).request("OPTIONS", "/v1/send?sid=x", &[("Origin", APP)], b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-headers"), Some("Content-Type, Last-Event-ID"));
    let r = post(&server, true, &sid, &Frame::Ping { nonce: 1 }.encode(), &[("Origin", "https://evil.example")]);
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    let mut h = Http::open(&server, true);
    let path = format!("/v1/sse?connect={}", b64url(&connect_frame("alice", "other", 0)));
    assert_eq!(h.request("GET", &path, &[("Origin", "null")], b"").status, 403);

    // The device's DISCONNECT ends the stream; its sid is gone.
    let bye = Frame::Disconnect { reason: 0, message: String::new() }.encode();
    assert_eq!(post(&server, true, &sid, &bye, &[]).status, 204);
    assert!(sse.event().is_none(), "stream ended");
    assert_eq!(post(&server, true, &sid, &Frame::Ping { nonce: 2 }.encode(), &[]).status, 404);
    server.assert_no_panic();
}

#[test]
fn replay_resume_with_last_event_id_and_dedup_on_plain_http() {
    let server = Config::default().tls(false).start();
    let mut bob = Client::connect_plain(server.addr()).unwrap();
    bob.login("bob", "phone", 0);
    for i in 1..=3u64 {
        bob.send_ok(i, "alice", format!("m{i}").as_bytes());
    }
    // CONNECT says 1, Last-Event-ID says 2: the larger wins, seq 3 is replayed.
    let (mut sse, ack, sid) = sse_open(&server, false, "alice", "web", 1, &[("Last-Event-ID", "2")]);
    assert_eq!(ack.head_seq, 3);
    let (e, p) = push_event(&mut sse);
    assert_eq!((p.seq, p.is_redelivery(), e.id.as_deref()), (3, true, Some("3")));
    assert_eq!(post(&server, false, &sid, &Frame::PushAck { seq: 3 }.encode(), &[]).status, 204);
    assert_eq!(post(&server, false, &sid, &send_to_user(9, "bob", b"once").encode(), &[]).status, 204);
    let first = match sse.frame_event().1 {
        Frame::SendAck(a) => a,
        f => panic!("{f:?}"),
    };
    bob.expect_push_seq(1, b"once");
    drop(sse);

    // A new stream (the browser's reconnect) with a Last-Event-ID that is
    // not a number: ignored; CONNECT's last_seq 2 → seq 3 again.
    let (mut sse, _, sid) = sse_open(&server, false, "alice", "web", 2, &[("Last-Event-ID", "x7")]);
    assert_eq!(push_event(&mut sse).1.seq, 3);
    // The SEND retried with the same client_msg_id: the first answer, no copy.
    assert_eq!(post(&server, false, &sid, &send_to_user(9, "bob", b"once").encode(), &[]).status, 204);
    match sse.frame_event().1 {
        Frame::SendAck(a) => assert_eq!((a.client_msg_id, a.msg_id), (9, first.msg_id)),
        f => panic!("{f:?}"),
    }
    bob.expect_silence(Duration::from_millis(300));
    server.assert_no_panic();
}

#[test]
fn replacement_across_transports() {
    let server = Config::default().workers(2).start();
    // An SSE session replaced by a TLS login of the same device.
    let (mut sse, _, sid) = sse_open(&server, true, "carol", "dev", 0, &[]);
    let (mut tls, _) = server.login("carol", "dev", 0);
    match sse.frame_event().1 {
        Frame::Disconnect { reason, .. } => assert_eq!(reason, reason::REPLACED),
        f => panic!("{f:?}"),
    }
    assert!(sse.event().is_none(), "stream ends after DISCONNECT");
    assert_eq!(post(&server, true, &sid, &Frame::Ping { nonce: 1 }.encode(), &[]).status, 404);
    tls.ping_pong(3);
    // And the other way: a new SSE session replaces the TLS connection.
    let (mut sse, _, sid) = sse_open(&server, true, "carol", "dev", 0, &[]);
    tls.expect_disconnect(reason::REPLACED);
    assert_eq!(post(&server, true, &sid, &Frame::Ping { nonce: 4 }.encode(), &[]).status, 204);
    assert!(matches!(sse.frame_event().1, Frame::Pong { nonce: 4 }));
    server.assert_no_panic();
}

#[test]
fn idle_close_and_pings() {
    let server = Config::default().heartbeat_s(1).start();
    let (mut sse, ack, sid) = sse_open(&server, true, "dave", "web", 0, &[]);
    assert_eq!(ack.heartbeat_s, 1);
    let start = Instant::now();
    // Pings come at half the heartbeat here, as comments.
    let ping = sse.event_within(Duration::from_secs(3)).unwrap();
    assert!(ping.comment && ping.data == "ping", "{ping:?}");
    // A POST is traffic: the idle clock restarts.
    assert_eq!(post(&server, true, &sid, &Frame::Ping { nonce: 1 }.encode(), &[]).status, 204);
    let posted = Instant::now();
    assert!(matches!(sse.frame_event().1, Frame::Pong { nonce: 1 }));
    // Then nothing: DISCONNECT 5 after 2.5 × heartbeat.
    match sse.frame_event().1 {
        Frame::Disconnect { reason, .. } => assert_eq!(reason, reason::IDLE_TIMEOUT),
        f => panic!("{f:?}"),
    }
    let idle = posted.elapsed();
    assert!(idle >= Duration::from_millis(2000) && start.elapsed() < Duration::from_secs(9), "{idle:?}");
    assert!(sse.event().is_none());
    assert_eq!(post(&server, true, &sid, &Frame::Ping { nonce: 1 }.encode(), &[]).status, 404);
    server.assert_no_panic();
}

#[test]
fn bad_requests() {
    let server = Config::default().start();
    // Unknown or malformed sid: 404.
    assert_eq!(post(&server, true, "AAAAAAAAAAAAAAAAAAAAAAA", &[], &[]).status, 404);
    assert_eq!(post(&server, true, "nonsense", &[], &[]).status, 404);
    assert_eq!(Http::open(&server, true).request("POST", "/v1/send", &[], b"").status, 404);
    // connect= that is not exactly one CONNECT: 400.
    let connect = connect_frame("erin", "web", 0);
    let two = [connect.clone(), connect.clone()].concat();
    for q in [
        "connect=@@@".to_string(),
        String::new(),
        format!("connect={}", b64url(&two)),
        format!("connect={}", b64url(&connect[..connect.len() - 2])),
        format!("connect={}", b64url(&Frame::Ping { nonce: 1 }.encode())),
    ] {
        let r = Http::open(&server, true).request("GET", &format!("/v1/sse?{q}"), &[], b"");
        assert_eq!(r.status, 400, "{q}");
    }
    // Padded base64url (as %3D) is accepted.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, &connect);
    let mut h = Http::open(&server, true);
    let r = h.request("GET", &format!("/v1/sse?connect={}", b64.replace('=', "%3D")), &[], b"");
    assert_eq!(r.status, 200);
    assert!(matches!(h.frame_event().1, Frame::ConnAck(ConnAck { status: 0, .. })));
    drop(h);
    // A bad token: the CONNACK is the only event, then the stream ends.
    let mut h = Http::open(&server, true);
    let bad = Frame::Connect(Connect::new("not.a.token", "web", 0)).encode();
    assert_eq!(h.request("GET", &format!("/v1/sse?connect={}", b64url(&bad)), &[], b"").status, 200);
    assert!(matches!(h.frame_event().1, Frame::ConnAck(ConnAck { status: connack::BAD_TOKEN, .. })));
    assert!(h.event().is_none());
    // CONNECT in a POST: DISCONNECT(1) on the stream, 400.
    let (mut sse, _, sid) = sse_open(&server, true, "erin", "web", 0, &[]);
    let r = post(&server, true, &sid, &connect, &[]);
    assert_eq!(r.status, 400);
    match sse.frame_event().1 {
        Frame::Disconnect { reason, .. } => assert_eq!(reason, reason::PROTOCOL_ERROR),
        f => panic!("{f:?}"),
    }
    assert!(sse.event().is_none());
    // A partial frame in a POST: the same.
    let (mut sse, _, sid) = sse_open(&server, true, "erin", "web", 0, &[]);
    let ping = Frame::Ping { nonce: 1 }.encode();
    assert_eq!(post(&server, true, &sid, &ping[..ping.len() - 1], &[]).status, 400);
    assert!(matches!(sse.frame_event().1, Frame::Disconnect { reason: 1, .. }));
    // Wrong method.
    assert_eq!(Http::open(&server, true).request("GET", "/v1/send?sid=x", &[], b"").status, 405);
    server.assert_no_panic();
}
