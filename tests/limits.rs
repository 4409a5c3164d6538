//! The `[limits]` against the real binary: each test drives a client into one
//! limit and checks the answer PROTOCOL.md defines for it (SENDACK 3/4/5/1,
//! CONNACK 2/3, DISCONNECT 8, close at accept), that nothing was stored for
//! a refused SEND, and that other clients keep working meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A raw TCP connection from `src` (a loopback address) to `addr`.
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

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

/// An HS256 token with arbitrary claims (JSON object text).
fn token_claims(claims: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(claims.as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{h}.{c}").as_bytes());
    format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Sends `frames` in one write and returns the SENDACKs for ids 1..=n.
fn pipelined_sendacks(c: &mut Client, frames: &[Frame]) -> Vec<SendAck> {
    let mut bytes = Vec::new();
    for f in frames {
        bytes.extend(f.encode());
    }
    c.send_raw(&bytes).unwrap();
    (1..=frames.len() as u64).map(|id| c.expect_sendack(id)).collect()
}

// ---- per connection --------------------------------------------------------

#[test]
fn send_rate_excess_gets_sendack_3_and_stores_nothing() {
    let s = Config::default().set("limits", "send_rate_per_connection = 5").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let frames: Vec<Frame> = (1..=30).map(|i| send_to_user(i, "bob", format!("m{i}").as_bytes())).collect();
    let acks = pipelined_sendacks(&mut alice, &frames);
    let stored: Vec<&SendAck> = acks.iter().filter(|a| a.status == 0).collect();
    let limited = acks.iter().filter(|a| a.status == 3).count();
    assert_eq!(stored.len() + limited, 30, "only 0 or 3 expected: {acks:?}");
    // Burst = rate = 5; a few ms of refill may add one more.
    assert!((5..=7).contains(&stored.len()), "{} stored: {acks:?}", stored.len());
    // Nothing was stored for the refused ones: bob's head is the stored count.
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!(ack.head_seq, stored.len() as u64);
    for (i, a) in stored.iter().enumerate() {
        let p = bob.expect_push();
        assert_eq!(p.seq, i as u64 + 1);
        assert_eq!(p.msg_id, a.msg_id);
    }
    // A refused id is not remembered: after the bucket refills, a retry with
    // the same client_msg_id is stored.
    let refused = acks.iter().find(|a| a.status == 3).unwrap().client_msg_id;
    std::thread::sleep(Duration::from_millis(400));
    let again = alice.send_and_ack(refused, "bob", b"retry");
    assert_eq!(again.status, 0, "{again:?}");
}

#[test]
fn payload_limit_and_push_fit_get_sendack_4() {
    let s = Config::default().max_frame(4096).set("limits", "max_payload_bytes = 3000").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    assert_eq!(alice.send_and_ack(1, "bob", &vec![b'x'; 3001]).status, 4);
    assert_eq!(alice.send_and_ack(2, "bob", &vec![b'x'; 3000]).status, 0);

    // A SEND that fits max_frame whose PUSH would not: the PUSH adds 28 bytes
    // plus the sender's id, the SEND only 15 plus the target's.
    let s = Config::default().max_frame(4096).set("limits", "max_payload_bytes = 60000").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let send_max = 4096 - (1 + 8 + 1 + 2 + 3);
    assert_eq!(alice.send_and_ack(1, "bob", &vec![b'y'; send_max]).status, 4, "PUSH of {send_max} B from alice exceeds 4096");
    let push_max = 4096 - (1 + 8 + 8 + 8 + 2 + 5 + 1);
    assert_eq!(alice.send_and_ack(2, "bob", &vec![b'z'; push_max]).status, 0);
    assert_eq!(alice.send_and_ack(3, "bob", &vec![b'z'; push_max + 1]).status, 4);
    let (mut bob, _) = s.login("bob", "phone", 0);
    let p = bob.expect_push();
    assert_eq!(p.payload.len(), push_max, "the largest fitting PUSH arrives whole");
}

#[test]
fn invalid_target_names_get_sendack_1() {
    let s = Config::default().start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let long = "u".repeat(256);
    for (i, bad) in ["", "bob\nINFO forged log line", "\u{1b}[2J", long.as_str(), "x\u{7f}"].iter().enumerate() {
        let a = alice.send_and_ack(i as u64 + 1, bad, b"hi");
        assert_eq!(a.status, 1, "target {bad:?}: {a:?}");
    }
    let f = send_to_group(10, "team\n", b"hi");
    alice.send_frame(&f);
    assert_eq!(alice.expect_sendack(10).status, 1);
    // 255 bytes is fine.
    assert_eq!(alice.send_and_ack(11, &"u".repeat(255), b"hi").status, 0);
}

#[test]
fn sends_in_flight_bound_gets_sendack_5() {
    // Under fsync = always a SEND stays in flight until its record is
    // synced; the syncer answers on a later loop turn, so of SENDs read in
    // one go only the first may be in flight.
    let s = Config::default().durable("always").set("limits", "max_sends_in_flight = 1").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let frames: Vec<Frame> = (1..=10).map(|i| send_to_user(i, "bob", b"m")).collect();
    let acks = pipelined_sendacks(&mut alice, &frames);
    assert_eq!(acks[0].status, 0, "{acks:?}");
    assert!(acks.iter().skip(1).all(|a| a.status == 0 || a.status == 5), "{acks:?}");
    let busy = acks.iter().filter(|a| a.status == 5).count();
    assert!(busy >= 1, "no SENDACK 5 with 10 pipelined SENDs and a bound of 1: {acks:?}");
    let stored = acks.iter().filter(|a| a.status == 0).count() as u64;
    let (_bob, ack) = s.login("bob", "phone", 0);
    assert_eq!(ack.head_seq, stored, "refused SENDs stored nothing");
}

#[test]
fn non_reading_client_is_backpressured_then_disconnected_8() {
    let s = Config::default()
        .tls(false)
        .set("server", "send_buffer_bytes = 8192")
        .set("limits", "output_high_water_bytes = 65536")
        .set("limits", "slow_consumer_timeout_ms = 1500")
        .start();
    let (hog, _) = s.login("hog", "phone", 0);
    let (mut other, _) = s.login("alice", "phone", 0);
    let rss_before = rss_kb(s.pid());
    // PINGs without ever reading the PONGs, until our writes block (the
    // server stopped reading) or a bounded count.
    let sock = hog.raw_socket();
    sock.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let batch: Vec<u8> = (0..1000u64).flat_map(|n| Frame::Ping { nonce: n }.encode()).collect();
    let mut sent = 0usize;
    let t0 = Instant::now();
    let mut w = &sock;
    while sent < 400_000_000 && t0.elapsed() < Duration::from_secs(20) {
        match w.write(&batch) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(20), "the server kept reading: {sent} bytes of PINGs accepted");
    // Meanwhile others are served promptly.
    let t = Instant::now();
    other.ping_pong(1);
    assert!(t.elapsed() < Duration::from_secs(1), "an unrelated PING took {:?}", t.elapsed());
    let grown_kb = rss_kb(s.pid()).saturating_sub(rss_before);
    assert!(grown_kb < 16 * 1024, "server RSS grew {grown_kb} KiB for one non-reading client ({sent} B of PINGs)");
    // After the timeout the server drops the connection: reading what is
    // left ends in a close, well before the PONGs for all PINGs arrived.
    std::thread::sleep(Duration::from_millis(2500));
    let mut r = &sock;
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match r.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
            Err(_) => break true,
        }
    };
    assert!(closed, "slow consumer still open after the timeout ({got} B read)");
    let pongs_owed = sent / 13 * 13;
    assert!(got < pongs_owed, "every PONG arrived ({got} of {pongs_owed} B): no backpressure happened");
    other.ping_pong(2);
    s.sigterm();
}

// ---- tokens ------------------------------------------------------------------

#[test]
fn token_claims_are_checked_without_overflow() {
    let s = Config::default().set("auth", "leeway_s = 30").set("auth", "audience = \"rg\"").start();
    let now = unix_now_s();
    let cases = [
        (format!(r#"{{"sub":"alice","exp":{},"aud":"rg"}}"#, now + 60), 0u8, "valid"),
        (format!(r#"{{"sub":"alice","exp":{},"aud":"rg"}}"#, now - 10), 0, "expired within the leeway"),
        (format!(r#"{{"sub":"alice","exp":{},"aud":"rg"}}"#, now - 120), 2, "expired beyond the leeway"),
        (format!(r#"{{"sub":"alice","exp":{},"nbf":{},"aud":"rg"}}"#, now + 600, now + 300), 2, "nbf in the future"),
        (r#"{"sub":"alice","exp":1e300,"aud":"rg"}"#.to_string(), 0, "huge exp"),
        (r#"{"sub":"alice","exp":18446744073709551615,"aud":"rg"}"#.to_string(), 0, "u64::MAX exp"),
        (format!(r#"{{"sub":"alice","exp":{}}}"#, now + 60), 2, "no aud"),
        (format!(r#"{{"sub":"al\nice","exp":{},"aud":"rg"}}"#, now + 60), 2, "control character in sub"),
    ];
    for (i, (claims, want, what)) in cases.iter().enumerate() {
        let mut c = s.client();
        let ack = c.connect_frame(&Connect::new(token_claims(claims), format!("d{i}"), 0));
        assert_eq!(ack.status, *want, "{what}: {ack:?}");
        if *want == 0 {
            // A huge exp must not have wrapped into "already expired".
            c.ping_pong(i as u64);
        }
    }
    s.assert_no_panic();
}

// ---- anonymous peers and admission -------------------------------------------

#[test]
fn preauth_connections_per_address_are_capped() {
    let s = Config::default()
        .workers(1)
        .set("server", "defer_accept_s = 0")
        .set("limits", "max_preauth_per_ip = 4")
        .start();
    let src: IpAddr = "127.0.0.5".parse().unwrap();
    let conns: Vec<TcpStream> = (0..12).map(|_| connect_from(src, s.addr()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed: Vec<bool> = conns.iter().map(|c| closed_within(c, Duration::from_millis(300))).collect();
    assert_eq!(closed.iter().filter(|c| **c).count(), 8, "12 idle connections from one address with a limit of 4");
    // Each newcomer shed the address's oldest: the 4 newest remain.
    assert!(closed[..8].iter().all(|c| *c) && !closed[8..].iter().any(|c| *c), "oldest shed first: {closed:?}");
    // Another address is not affected, and a login from the limited address
    // works once its anonymous connections are gone.
    let (_c, _) = s.login("alice", "phone", 0);
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    let c = connect_from(src, s.addr()).unwrap();
    assert!(!closed_within(&c, Duration::from_millis(300)), "a fresh connection was refused after the others closed");
}

#[test]
fn near_max_connections_anonymous_ones_are_shed_and_logins_still_work() {
    let s = Config::default()
        .workers(1)
        .set("server", "defer_accept_s = 0")
        .set("limits", "max_connections = 200")
        .set("limits", "max_preauth_per_ip = 1000")
        .set("limits", "connect_rate_per_ip = 100000")
        .start();
    // 400 idle connects from 40 addresses: twice the limit.
    let mut idle = Vec::new();
    for i in 0..400u32 {
        let src: IpAddr = format!("127.0.1.{}", 10 + i % 40).parse().unwrap();
        idle.push(connect_from(src, s.addr()).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    // Legitimate logins keep getting in, quickly.
    let mut worst = Duration::ZERO;
    let mut clients = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let (c, _) = s.login(&format!("user{i}"), "phone", 0);
        worst = worst.max(t.elapsed());
        clients.push(c);
    }
    assert!(worst < Duration::from_secs(1), "slowest login among anonymous floods: {worst:?}");
    let shed = idle.iter().filter(|c| closed_within(c, Duration::from_millis(50))).count();
    assert!(shed >= 200, "only {shed} of 400 anonymous connections were shed with max_connections = 200");
    // Authenticated ones were never shed.
    for (i, c) in clients.iter_mut().enumerate() {
        c.ping_pong(i as u64);
    }
}

#[test]
fn connect_storm_gets_connack_3() {
    let s = Config::default().workers(1).set("limits", "connect_rate = 3").start();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let mut c = s.client();
        let ack = c.connect_frame(&Connect::new(token("alice"), format!("d{i}"), 0));
        if ack.status == 3 {
            c.expect_closed();
        }
        statuses.push(ack.status);
    }
    assert_eq!(statuses.iter().filter(|&&st| st == 0).count(), 3, "burst = rate = 3: {statuses:?}");
    assert!(statuses[3..].iter().all(|&st| st == 3), "{statuses:?}");
}

/// Whether `s` is still open, without waiting.
fn is_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 16];
    let mut r = s;
    let open = matches!(r.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

#[test]
fn anonymous_connection_parked_in_a_partial_record_costs_little() {
    let s = Config::default()
        .workers(1)
        .set("server", "defer_accept_s = 0")
        .set("limits", "max_preauth_per_ip = 100000")
        .set("limits", "connect_rate_per_ip = 100000")
        .start();
    // A handshake record header announcing the largest plaintext record
    // (16,384 bytes), and all of it but a few bytes: the most an anonymous
    // peer can make the server buffer without completing a record.
    let announced: usize = std::env::var("PARK_ANNOUNCE").ok().and_then(|v| v.parse().ok()).unwrap_or(16_384);
    let sent: usize = std::env::var("PARK_SEND").ok().and_then(|v| v.parse().ok()).unwrap_or(16_380);
    let mut partial = vec![0x16, 0x03, 0x01];
    partial.extend((announced as u16).to_be_bytes());
    partial.extend(std::iter::repeat_n(0x01u8, sent));
    let open = |from: usize, n: usize| -> Vec<TcpStream> {
        (from..from + n)
            .map(|i| {
                let src: IpAddr = format!("127.0.2.{}", 1 + i % 200).parse().unwrap();
                let mut c = connect_from(src, s.addr()).unwrap();
                if sent > 0 {
                    c.write_all(&partial).unwrap();
                }
                c
            })
            .collect()
    };
    // A first batch warms the allocator and the runtime up, so the measured
    // batch shows the cost per connection, not one-time growth.
    let mut conns = open(0, 300);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(s.pid());
    let n = 1500;
    conns.extend(open(300, n));
    std::thread::sleep(Duration::from_millis(1000));
    let per_conn = (rss_kb(s.pid()).saturating_sub(before)) * 1024 / n as u64;
    eprintln!("RSS per parked anonymous connection: {per_conn} B ({sent} B of a {announced} B record each)");
    let still_open = conns.iter().filter(|c| is_open(c)).count();
    assert_eq!(still_open, conns.len(), "anonymous connections closed while under every limit");
    assert!(per_conn <= 24 * 1024, "{per_conn} B of RSS per anonymous connection parked in a partial record");
    // A real client is served meanwhile.
    let (mut c, _) = s.login("alice", "phone", 0);
    c.ping_pong(1);
}

#[test]
fn rustls_peer_errors_are_not_logged_per_connection() {
    let s = Config::default().start();
    // ClientHellos whose SNI is not a valid DNS name (peer-chosen text):
    // rustls WARNs about each one ("Illegal SNI hostname received").
    let hello = client_hello_bytes(s.cert_path());
    let at = hello.windows(9).position(|w| w == b"localhost").expect("SNI in the ClientHello");
    for i in 0..30u8 {
        let mut bad = hello.clone();
        bad[at..at + 9].copy_from_slice(&[b'e', b'v', b'i', b'l', b' ', b'\n', b'x', b'0' + i % 10, b'!']);
        let mut c = TcpStream::connect(s.addr()).unwrap();
        let _ = c.write_all(&bad);
        let _ = closed_within(&c, Duration::from_millis(300));
    }
    let mut bad = 0;
    for i in 0..30 {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03];
        junk.extend(noise(60, i));
        let _ = c.write_all(&junk);
        if closed_within(&c, Duration::from_secs(2)) {
            bad += 1;
        }
    }
    assert_eq!(bad, 30, "mangled ClientHellos were not refused");
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log().tail();
    let warns = log.lines().filter(|l| l.contains("WARN") && l.contains("rustls")).count();
    assert_eq!(warns, 0, "rustls warnings in the log:\n{log}");
}

// ---- a panic outside a connection task -----------------------------------------

#[test]
fn worker_panic_outside_a_connection_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::default();
    let path = dir.path().join("ringgate.toml");
    std::fs::write(&path, cfg.to_toml(&dir.path().join("data"))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RINGGATE_FAULT_TICKER_PANIC_AFTER_MS", "300")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let res = out.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(res.status.code(), Some(70), "exit status after a worker panic");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("panicked outside a connection"), "{err}");
}

#[test]
fn token_command_refuses_what_the_server_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringgate.toml");
    std::fs::write(&path, Config::default().to_toml(&dir.path().join("data"))).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringgate")).arg("token").arg("--config").arg(&path).args(args).output().unwrap()
    };
    for (args, what) in [
        (vec!["--user", "al\nice"], "control character"),
        (vec!["--user", ""], "empty"),
        (vec!["--user", &"u".repeat(256)], "256 bytes"),
        (vec!["--user", "alice", "--ttl-s", "0"], "zero TTL"),
        (vec!["--user", "alice", "--ttl-s", "-5"], "negative TTL"),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty(), "{what}: printed a token");
    }
    let ok = run(&["--user", "alice", "--ttl-s", "60"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The token it prints is accepted by a server with the same secret.
    let token = String::from_utf8(ok.stdout).unwrap().trim().to_string();
    let s = Config::default().start();
    let mut c = s.client();
    assert_eq!(c.connect_frame(&Connect::new(token, "d", 0)).status, 0);
}

// ---- groups ------------------------------------------------------------------

#[test]
fn group_fanout_stores_the_payload_once_and_others_keep_their_latency() {
    let members: Vec<String> = std::iter::once("alice".to_string()).chain((0..2000).map(|i| format!("member{i}"))).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let s = Config::default().group("big", &refs).set("limits", "send_rate_per_connection = 1000").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let payload = vec![b'g'; 60_000];
    // The first message creates the 2,000 inboxes (and ledger entries):
    // the issue's target is < 8 MiB for it. Seen 2.8-4.4 MiB since the
    // server runs without transparent huge pages (28-34 MiB with them:
    // src/main.rs); the exact heap per member is in tests/group_memory.rs.
    std::thread::sleep(Duration::from_millis(100));
    let before_first = rss_kb(s.pid());
    alice.send_frame(&send_to_group(1, "big", &payload));
    assert_eq!(alice.expect_sendack(1).status, 0);
    std::thread::sleep(Duration::from_millis(200));
    let first_kb = rss_kb(s.pid()).saturating_sub(before_first);
    eprintln!("RSS for the first 60 KB message to 2,000 members (2,000 new inboxes): {first_kb} KiB");
    assert!(first_kb < 8 * 1024, "the first 60 KB message to 2,000 members cost {first_kb} KiB of RSS");
    // Then ten more, measured together and divided. Copied per member,
    // each one would cost 120 MB; seen 0.65-0.85 MiB each (about 0.5 MB of
    // it the ledger's and inboxes' entries).
    let before = rss_kb(s.pid());
    for id in 2..12 {
        alice.send_frame(&send_to_group(id, "big", &payload));
        assert_eq!(alice.expect_sendack(id).status, 0);
    }
    std::thread::sleep(Duration::from_millis(200));
    let per_msg_kb = rss_kb(s.pid()).saturating_sub(before) / 10;
    eprintln!("RSS per 60 KB message to 2,000 members: {per_msg_kb} KiB");
    assert!(per_msg_kb < 2 * 1024, "one 60 KB message to 2,000 members costs {per_msg_kb} KiB of RSS");

    // An unrelated client pings throughout ten more such messages.
    let (mut pinger, _) = s.login("zed", "phone", 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ping_thread = std::thread::spawn(move || {
        let mut rtts = Vec::new();
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            pinger.ping_pong(n);
            rtts.push(t.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        rtts
    });
    std::thread::sleep(Duration::from_millis(50));
    let frames: Vec<Frame> = (20..30).map(|i| send_to_group(i, "big", &payload)).collect();
    let mut bytes = Vec::new();
    for f in &frames {
        bytes.extend(f.encode());
    }
    alice.send_raw(&bytes).unwrap();
    for i in 20..30 {
        assert_eq!(alice.expect_sendack(i).status, 0);
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rtts = ping_thread.join().unwrap();
    rtts.sort();
    let p99 = rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)];
    eprintln!("PING round trips during ten 60 KB sends to 2,000 members: {} samples, p50 {:?}, p99 {p99:?}, max {:?}", rtts.len(), rtts[rtts.len() / 2], rtts[rtts.len() - 1]);
    assert!(rtts.len() >= 5, "too few pings: {}", rtts.len());
    // The target (issue: p99 < 50 ms) is a benchmark figure on a quiet
    // machine; the test holds a wide margin for a shared CI box. Before the
    // fan-out was sliced and shared, these round trips took seconds.
    assert!(p99 < Duration::from_millis(250), "unrelated PING p99 {p99:?} during the fan-out");
}

#[test]
fn memory_budget_full_gets_sendack_5_and_rss_stays_bounded() {
    // 2 workers share 4 MiB: 2 MiB per core of retained payloads.
    let s = Config::default().set("store", "memory_budget_bytes = 4194304").set("limits", "send_rate_per_connection = 100000").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let before = rss_kb(s.pid());
    let payload = vec![b'm'; 50_000];
    let mut statuses = Vec::new();
    for id in 1..=400u64 {
        // Made-up user ids on both cores, as in the attack that grew RSS by 2 GB.
        let a = alice.send_and_ack(id, &format!("nobody{id}"), &payload);
        statuses.push(a.status);
    }
    let stored = statuses.iter().filter(|&&st| st == 0).count();
    let busy = statuses.iter().filter(|&&st| st == 5).count();
    assert_eq!(stored + busy, 400, "{statuses:?}");
    // 4 MiB / (50 KB + 64) ≈ 83 messages fit, minus rounding per core.
    assert!((60..=90).contains(&stored), "{stored} stored with a 4 MiB budget");
    let grown_kb = rss_kb(s.pid()).saturating_sub(before);
    assert!(grown_kb < 32 * 1024, "RSS grew {grown_kb} KiB with a 4 MiB budget (20 MB were sent)");
    // Others still work, and a SENDACK 5 is retryable: the server is alive.
    let (mut bob, _) = s.login("bob", "phone", 0);
    bob.ping_pong(1);
}
