//! Bounded input on every transport (issue 20, item 3), against the real server: frames POSTed for an SSE session obey its output high-water mark (the abuse measured in RSS), long-poll sessions count against `max_connections` and follow the session rules, `limits.max_devices_per_user`, and per-address admission that sheds the oldest anonymous connection instead of refusing a newcomer.

mod common;
mod websess;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use websess::*;

/// The server's resident set, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// One SSE session whose stream is never read, fed by POSTs of PINGs (each
/// makes a PONG event on the stream). Before the bound every POST was
/// answered 204 and the server grew by gigabytes; now POSTs beyond the
/// high-water mark are answered 429 with Retry-After, nothing processed,
/// and the server grows by at most 32 MB.
#[test]
fn sse_posts_obey_the_high_water_mark_and_bound_server_growth() {
    let server = Config::default().tls(false).workers(1).start();
    let mut sse = Http::open(&server, false);
    let path = format!("/v1/sse?connect={}", b64url(&connect_frame("abuser", "web", 0)));
    let r = sse.request("GET", &path, &[], b"");
    assert_eq!(r.status, 200);
    let (_, f) = sse.frame_event();
    assert!(matches!(f, Frame::ConnAck(ConnAck { status: 0, .. })), "{f:?}");
    let sid = sse.event().unwrap().data;
    // From here the stream is never read again.
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_bytes(server.pid());

    // 64 KiB of PINGs per POST (~5,000 PONG events, ~200 KB of stream each).
    let ping = Frame::Ping { nonce: 7 }.encode();
    let body: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * (65_536 / ping.len())).collect();
    let mut post = Http::open(&server, false);
    let (mut ok, mut refused, mut posted) = (0u32, 0u32, 0usize);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) && posted < 400 << 20 {
        let r = post.request("POST", &format!("/v1/send?sid={sid}"), &[], &body);
        match r.status {
            204 => ok += 1,
            429 => {
                assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
                refused += 1;
            }
            s => panic!("POST answered {s}: {r:?}"),
        }
        posted += body.len();
    }
    let after = rss_bytes(server.pid());
    let growth = after.saturating_sub(before);
    eprintln!(
        "SSE abuse: {} MB POSTed in {:.1} s, {ok} answered 204, {refused} answered 429; server RSS {} -> {} MB (+{:.1} MB)",
        posted >> 20,
        t.elapsed().as_secs_f64(),
        before >> 20,
        after >> 20,
        growth as f64 / 1e6
    );
    assert!(refused > 0, "no POST was refused ({ok} accepted)");
    assert!(ok >= 1, "the first POSTs are within the mark");
    assert!(growth <= 32_000_000, "server grew by {growth} bytes");
    // A refused POST processed nothing: the session is still open and usable.
    let r = post.request("POST", &format!("/v1/send?sid={sid}"), &[], b"");
    assert_eq!(r.status, 204, "an empty POST is always served: {r:?}");
    server.assert_no_panic();
}

fn lp_connect(server: &Server, user: &str, device: &str) -> Resp {
    Http::open(server, false).request("POST", "/v1/lp/connect", &[], &connect_frame(user, device, 0))
}

fn poll(server: &Server, sid: &str, body: &[u8]) -> Resp {
    Http::open(server, false).request("POST", &format!("/v1/lp?sid={sid}"), &[], body)
}

/// Long-poll sessions hold a session, a queue and a device each: they count
/// against `max_connections`, and at the limit a connect is answered 503
/// with Retry-After. Ending one gives its place back.
#[test]
fn long_poll_sessions_count_against_max_connections() {
    // 4 sessions + the HTTP connection of a request = 5.
    let server = Config::default().tls(false).workers(1).set("limits", "max_connections = 5").start();
    let mut sids = Vec::new();
    for i in 0..4 {
        // Each request's connection is closed after its answer.
        let r = lp_connect(&server, &format!("u{i}"), "web");
        assert_eq!(r.status, 200, "session {i}: {r:?}");
        sids.push(r.header("x-ringgate-session").unwrap().to_string());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = lp_connect(&server, "u9", "web");
    assert_eq!(r.status, 503, "a fifth session over max_connections = 5 with 4 open: {r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    // The device's DISCONNECT ends one session: room for a new one.
    std::thread::sleep(Duration::from_millis(200));
    let r = poll(&server, &sids[0], &Frame::Disconnect { reason: 0, message: String::new() }.encode());
    assert_eq!(r.status, 204);
    std::thread::sleep(Duration::from_millis(200));
    let r = lp_connect(&server, "u9", "web");
    assert_eq!(r.status, 200, "{r:?}");
    server.assert_no_panic();
}

/// A frame that passes the POST body check but breaks the protocol inside
/// (a PING with a byte too many) ends the session like on any transport:
/// `400`, the DISCONNECT 1 for the next poll, then `404`. A session left
/// idle past 2.5 × heartbeat, and then past the wait for its last poll, is
/// gone: `404`.
#[test]
fn long_poll_follows_the_session_rules() {
    let server = Config::default().tls(false).workers(1).heartbeat_s(1).set("web", "poll_timeout_s = 1").start();
    let r = lp_connect(&server, "lp", "a");
    let sid = r.header("x-ringgate-session").unwrap().to_string();
    let mut bad = Frame::Ping { nonce: 1 }.encode();
    bad[3] += 1;
    bad.push(0);
    let r = poll(&server, &sid, &bad);
    assert_eq!(r.status, 400, "{r:?}");
    let r = poll(&server, &sid, b"");
    assert!(matches!(&r.frames()[..], [Frame::Disconnect { reason: 1, .. }]), "{r:?}");
    assert_eq!(poll(&server, &sid, b"").status, 404);

    // Idle: heartbeat 1 s → closed at 2.5 s, its sid kept 2.5 s more for
    // the last poll; nobody polls → 404.
    let r = lp_connect(&server, "lp", "b");
    let sid = r.header("x-ringgate-session").unwrap().to_string();
    std::thread::sleep(Duration::from_millis(6_500));
    assert_eq!(poll(&server, &sid, b"").status, 404);
    server.assert_no_panic();
}

/// `limits.max_devices_per_user = 3`: a new device beyond evicts the least
/// recently seen offline device, whose dedup table goes with it (a SEND it
/// retries after is stored anew); with every device online a new one gets
/// CONNACK 3.
#[test]
fn devices_per_user_are_capped() {
    let server = Config::default().tls(false).workers(1).set("limits", "max_devices_per_user = 3").start();
    // d1 sends and leaves first, d2 sends and leaves after.
    let mut first = Vec::new();
    for d in ["d1", "d2"] {
        let (mut c, _) = server.login("ann", d, 0);
        first.push(c.send_ok(1, "bob", d.as_bytes()).msg_id);
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut d3, _) = server.login("ann", "d3", 0);
    // d4 evicts d1 (the least recently seen offline device), not d2: d2's
    // retry of SEND 1 is still deduplicated.
    let (mut d4, _) = server.login("ann", "d4", 0);
    let (mut d2, _) = server.login("ann", "d2", 0);
    assert_eq!(d2.send_ok(1, "bob", b"d2").msg_id, first[1], "d2 was evicted instead of d1");
    // d2, d3, d4 online: a fourth device is refused, CONNACK 3.
    let mut d1 = server.client();
    let ack = d1.connect_frame(&Connect::new(token("ann"), "d1", 0));
    assert_eq!(ack.status, 3, "CONNACK 3 with every device online");
    d1.expect_closed();
    d3.ping_pong(1);
    d4.ping_pong(1);
    // d3 leaves: d1 gets in (evicting d3) as a new device: its retry is new.
    drop(d3);
    std::thread::sleep(Duration::from_millis(200));
    let (mut d1, _) = server.login("ann", "d1", 0);
    assert_ne!(d1.send_ok(1, "bob", b"d1").msg_id, first[0], "d1 was remembered past the cap");
    d2.ping_pong(2);
    d4.ping_pong(2);
    server.assert_no_panic();
}

fn connect_from(src: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    let mut r = s;
    loop {
        match r.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

/// A plain-TCP login from `src`; the CONNACK status, or None when the
/// connection was closed before it came.
fn login_from(src: IpAddr, addr: SocketAddr, user: &str) -> Option<u8> {
    let mut s = connect_from(src, addr).ok()?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&Frame::Connect(Connect::new(token(user), "phone", 0)).encode()).ok()?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut body).ok()?;
    match Frame::decode(body[0], &body[1..]).ok()? {
        Frame::ConnAck(a) => Some(a.status),
        _ => None,
    }
}

/// A slowloris from one address (users behind one NAT) holds every pre-auth
/// slot of the address and refills it after every login, trickling a byte
/// now and then on each connection; fresh logins from the same address
/// still get in, each shedding the oldest trickler. (Before, each of these
/// logins was closed at accept.)
#[test]
fn slowloris_from_one_address_does_not_lock_out_fresh_logins() {
    let server = Config::default()
        .tls(false)
        .workers(1)
        .set("server", "defer_accept_s = 0")
        .set("limits", "max_preauth_per_ip = 16")
        .handshake_timeout_ms(60_000)
        .start();
    let src: IpAddr = "127.0.0.9".parse().unwrap();
    let open_loris = || {
        let mut s = connect_from(src, server.addr()).unwrap();
        // The length prefix of a 256-byte frame, whose bytes then trickle.
        s.write_all(&[0, 0, 1, 0]).unwrap();
        s
    };
    let mut loris: Vec<TcpStream> = (0..16).map(|_| open_loris()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut ok = 0;
    for i in 0..10 {
        if login_from(src, server.addr(), &format!("nat{i}")) == Some(0) {
            ok += 1;
        }
        // The slowloris takes the freed slot again and keeps trickling.
        loris.push(open_loris());
        for s in &mut loris {
            let _ = s.write_all(b"x");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ok, 10, "fresh logins from the slowloris' address");
    // Each login shed the oldest trickler: the first ten are gone, the 16
    // newest still wait.
    let shed: Vec<bool> = loris.iter().map(|s| closed_within(s, Duration::from_millis(200))).collect();
    assert!(shed[..10].iter().all(|c| *c) && !shed[10..].iter().any(|c| *c), "oldest first: {shed:?}");
    server.assert_no_panic();
}

/// Sends `raw` on a fresh plain connection to the gateway port; the status
/// of the answer and whether the server then closed the connection.
fn raw_status(server: &Server, raw: &[u8]) -> (u16, bool) {
    let mut h = Http::open(server, false);
    h.send_raw(raw);
    let r = h.response_within(Duration::from_secs(5));
    (r.status, r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")))
}

/// The gateway port parses with the one HTTP/1.1 parser (`src/http`): a
/// chunk size that overflows is `400` at once (it used to wrap and hang),
/// Content-Length with Transfer-Encoding is `400` (RFC 9112 request
/// smuggling rule), HTTP/1.0 is `505`, `Expect: 100-continue` gets its
/// interim answer, a 204 carries no Content-Length.
#[test]
fn gateway_http_uses_the_one_parser() {
    let server = Config::default().tls(false).workers(1).set("web", "poll_timeout_s = 1").start();
    let head = "POST /v1/lp?sid=AAAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for chunks in ["1\r\na\r\n1ffffffffffffffff\r\n", "fffffffffffffffff\r\n", "1\r\na\r\nzz\r\n"] {
        let t = Instant::now();
        let (status, close) = raw_status(&server, format!("{head}{chunks}").as_bytes());
        assert_eq!((status, close), (400, true), "{chunks:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{chunks:?} took {:?}", t.elapsed());
    }
    // A chunk whose size fits u64 but not the body limit: 413 before its bytes.
    let (status, _) = raw_status(&server, format!("{head}1\r\na\r\nffffffffffffffff\r\n").as_bytes());
    assert_eq!(status, 413);
    let both = b"POST /v1/lp/connect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(raw_status(&server, both), (400, true));
    assert_eq!(raw_status(&server, b"GET /v1/route HTTP/1.0\r\nHost: x\r\n\r\n").0, 505);
    // Expect: 100-continue: the interim answer, then the real one.
    let connect = connect_frame("exp", "web", 0);
    let mut h = Http::open(&server, false);
    h.send_raw(format!("POST /v1/lp/connect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", connect.len()).as_bytes());
    assert_eq!(h.response_within(Duration::from_secs(5)).status, 100);
    h.send_raw(&connect);
    let r = h.response_within(Duration::from_secs(5));
    assert_eq!(r.status, 200, "{r:?}");
    // A 204 carries no Content-Length (RFC 9110), a keep-alive answer no close.
    let mut h = Http::open(&server, false);
    let sid = r.header("x-ringgate-session").unwrap().to_string();
    h.send_raw(format!("POST /v1/lp?sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes());
    let r = h.response_within(Duration::from_secs(5));
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.header("content-length").is_none() && r.header("connection").is_none(), "{r:?}");
    server.assert_no_panic();
}
