//! The client SDK's ladder, route handling and recovery against the real
//! server and real sockets: endpoints that accept TCP and never answer TLS,
//! refuse, or reset mid-handshake; failure reports and the server's
//! demotion; a route with a bad signature; the background refresh at
//! 0.75 × TTL; and a server restart mid-conversation.
//!
//! Time bounds are coarse on purpose (a shared 2-core machine): what they
//! tell apart is "about one stagger" from "one attempt timeout" (30 s).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ringgate_client::ladder::LadderEvent;
use ringgate_client::{BackoffPolicy, Client, ClientConfig, ClientEvent, Endpoint, Error, LadderPolicy, Target, TokenSource, Trust};

/// Accepts TCP and never says a word; counts accepted and closed connections.
struct Blackhole {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

fn blackhole() -> Blackhole {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, c) = (accepted.clone(), closed.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                // Swallow the ClientHello; EOF or reset means the client closed it.
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Blackhole { addr, accepted, closed }
}

/// A port nobody listens on (connection refused).
fn refused() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Reads the ClientHello, then resets the connection (RST, mid-TLS).
fn resetter() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hellos = Arc::new(AtomicUsize::new(0));
    let h = hellos.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut b = [0u8; 4096];
            if matches!(s.read(&mut b), Ok(n) if n > 0) {
                h.fetch_add(1, Ordering::SeqCst);
            }
            let s = socket2::Socket::from(s);
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    (addr, hellos)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn ep(id: &str, addr: SocketAddr, host: &str) -> Endpoint {
    Endpoint {
        id: id.into(),
        transport: "tls".into(),
        host: Some(host.into()),
        addr: Some(addr.ip().to_string()),
        port: addr.port(),
        sni: None,
        priority: 0,
        weight: 100,
    }
}

/// Events seen by a client, for assertions.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<ClientEvent>>>);

impl Seen {
    fn hook(&self) -> impl Fn(&ClientEvent) + std::marker::Send + Sync + 'static {
        let s = self.0.clone();
        move |e| s.lock().unwrap().push(e.clone())
    }
    fn failed_ids(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Ladder(LadderEvent::Failed { id, .. }) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }
    fn any(&self, f: impl Fn(&ClientEvent) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(f)
    }
}

fn base(user: &str, device: &str, cert: &Path) -> ClientConfig {
    ClientConfig::new(device, TokenSource::Static(token(user))).trust(Trust::CaFile(cert.to_path_buf()))
}

fn key_of(s: &Server) -> [u8; 32] {
    let hex_key = std::fs::read_to_string(s.data_dir().join("route-key.pub")).unwrap();
    ringgate_client::route::parse_key(&hex_key).unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time-to-connect through 0, 1 and 2 endpoints that accept TCP and never
/// answer TLS: about k × stagger, never an attempt timeout; the losers'
/// sockets are closed once another attempt wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ladder_through_silent_endpoints_costs_one_stagger_each() {
    let s = Server::start(Config::default());
    let good = ep("good", s.addr(), "localhost");
    let stagger = 1000;
    let mut figures = Vec::new();
    for dead in 0..3usize {
        let holes: Vec<Blackhole> = (0..dead).map(|_| blackhole()).collect();
        let mut eps: Vec<Endpoint> = holes.iter().enumerate().map(|(i, h)| ep(&format!("dead{i}"), h.addr, "localhost")).collect();
        eps.push(good.clone());
        let mut cfg = base("alice", &format!("ladder{dead}"), s.cert_path())
            .ladder(LadderPolicy { stagger_ms: stagger, attempt_timeout_ms: 30_000 });
        cfg.fallback = eps;
        let t0 = Instant::now();
        let client = Client::connect(cfg).await.expect("connects");
        let took = t0.elapsed();
        figures.push(took);
        let want = Duration::from_millis(stagger * dead as u64);
        assert!(took >= want, "{dead} dead: {took:?} < {want:?}");
        assert!(took < want + Duration::from_millis(2500), "{dead} dead: {took:?}, expected about {want:?}");
        for h in &holes {
            assert_eq!(h.accepted.load(Ordering::SeqCst), 1);
            let closed = h.closed.clone();
            wait_until("the losing attempt's socket to close", || closed.load(Ordering::SeqCst) == 1).await;
        }
        let ack = client.send_to_user("bob", b"hi").await.unwrap();
        assert_eq!(ack.status, 0);
    }
    eprintln!(
        "time-to-connect (stagger {stagger} ms): 0 dead {} ms, 1 dead {} ms, 2 dead {} ms",
        figures[0].as_millis(),
        figures[1].as_millis(),
        figures[2].as_millis()
    );
}

/// Refused, reset mid-TLS and a wrong certificate name each fail at once,
/// and the next attempt starts at once: connected well inside one stagger.
/// The endpoint that works is dialled by IP with its name as SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reset_and_wrong_name_fail_fast() {
    let s = Server::start(Config::default());
    let (reset_addr, hellos) = resetter();
    let seen = Seen::default();
    let mut cfg = base("alice", "fast", s.cert_path())
        .ladder(LadderPolicy { stagger_ms: 10_000, attempt_timeout_ms: 30_000 })
        .on_event(seen.hook());
    cfg.fallback = vec![
        ep("refused", refused(), "localhost"),
        ep("reset", reset_addr, "localhost"),
        ep("wrongname", s.addr(), "not-in-the-certificate.example"),
        ep("good", s.addr(), "localhost"),
    ];
    let t0 = Instant::now();
    let client = Client::connect(cfg).await.expect("connects");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}: not one stagger (10 s)", t0.elapsed());
    assert_eq!(seen.failed_ids(), ["refused", "reset", "wrongname"]);
    assert_eq!(hellos.load(Ordering::SeqCst), 1, "the reset came after the ClientHello");
    assert!(seen.any(|e| matches!(e, ClientEvent::Connected { endpoint, .. } if endpoint.starts_with("good"))));
    assert_eq!(client.send_to_user("bob", b"x").await.unwrap().status, 0);
}

/// Through the route: the silent first endpoint costs one stagger, is
/// reported in `failed=` on the next fetch, and after three such reports
/// the server lists it last, so the next client connects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_and_the_server_demotes() {
    let hole = blackhole();
    let port = free_port();
    let extra = format!(
        r#"[route]
stagger_ms = 700
[[route.endpoints]]
id = "dead"
transport = "tls"
host = "localhost"
addr = "127.0.0.1"
port = {}
[[route.endpoints]]
id = "good"
transport = "tls"
host = "localhost"
addr = "127.0.0.1"
port = {port}
priority = 1
"#,
        hole.addr.port()
    );
    let s = Server::start(Config::default().listen(&format!("127.0.0.1:{port}")).extra(&extra));
    let url = format!("https://127.0.0.1:{port}/v1/route");
    let key = key_of(&s);
    for i in 0..3 {
        let cfg = base("alice", &format!("demote{i}"), s.cert_path()).route(url.clone(), key);
        let t0 = Instant::now();
        let c = Client::connect(cfg).await.expect("connects");
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(700) && took < Duration::from_millis(3500), "{took:?}");
        assert_eq!(c.failed_to_report(), ["dead"]);
        let r = c.refresh_route().await.expect("route");
        assert!(c.failed_to_report().is_empty(), "reported with the fetch");
        let order: Vec<&str> = r.endpoints.iter().map(|e| e.id.as_str()).collect();
        if i < 2 {
            assert_eq!(order, ["dead", "good"], "not demoted after {} reports", i + 1);
        } else {
            assert_eq!(order, ["good", "dead"], "demoted after 3 reports of 6 requests");
        }
    }
    let closed = hole.closed.clone();
    wait_until("all losing attempts closed", || closed.load(Ordering::SeqCst) == 3).await;
    // Two more clients report it (raw requests): 5 failures in 8 requests,
    // so the next client's own fetch (the 9th) still finds it demoted. The
    // share is per request: healthy fetches dilute it, by contract.
    tokio::task::block_in_place(|| {
        for _ in 0..2 {
            let body = route_body(&s, "/v1/route?failed=dead");
            assert!(body.contains("good"));
        }
    });
    let cfg = base("alice", "after", s.cert_path()).route(url, key);
    let t0 = Instant::now();
    let _c = Client::connect(cfg).await.expect("connects");
    assert!(t0.elapsed() < Duration::from_millis(700), "good is first now: {:?}", t0.elapsed());
    assert_eq!(hole.accepted.load(Ordering::SeqCst), 3);
}

/// A plain-HTTP route service that serves whatever body it holds now,
/// after an optional delay, and records when each request came.
struct FakeRoute {
    addr: SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    delay: Arc<Mutex<Duration>>,
    hits: Arc<Mutex<Vec<Instant>>>,
}

fn fake_route(body: Vec<u8>) -> FakeRoute {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let body = Arc::new(Mutex::new(body));
    let delay = Arc::new(Mutex::new(Duration::ZERO));
    let hits = Arc::new(Mutex::new(Vec::new()));
    let (b, d, h) = (body.clone(), delay.clone(), hits.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let (b, d, h) = (b.clone(), d.clone(), h.clone());
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut chunk = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&chunk[..n]),
                    }
                }
                h.lock().unwrap().push(Instant::now());
                let wait = *d.lock().unwrap();
                std::thread::sleep(wait);
                let body = b.lock().unwrap().clone();
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(&body);
            });
        }
    });
    FakeRoute { addr, body, delay, hits }
}

fn route_body(s: &Server, path: &str) -> String {
    let cfg = tls_config(s.cert_path(), TlsOptions { alpn: false, ..TlsOptions::default() });
    let sock = TcpStream::connect(s.addr()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, rustls::pki_types::ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    String::from_utf8(raw[at..].to_vec()).unwrap()
}

/// The route body the real server gives, fetched over TLS without ALPN.
fn real_route_body(s: &Server) -> Vec<u8> {
    route_body(s, "/v1/route").into_bytes()
}

/// Same envelope, payload edited (port pointed elsewhere): the signature no longer matches.
fn tampered(body: &[u8], from_port: u16, to_port: u16) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let t = text.replace(&format!("\\\"port\\\":{from_port}"), &format!("\\\"port\\\":{to_port}"));
    assert_ne!(t, text, "the port was in the payload");
    t.into_bytes()
}

/// A route whose signature does not verify is never used: with nothing
/// cached the built-in endpoints are; with a cached copy, that copy is
/// (even past its TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_falls_back_to_builtin_then_cache() {
    let port = free_port();
    let mut s = Server::start(Config::default().listen(&format!("127.0.0.1:{port}")).extra("[route]\nttl_s = 1\nstagger_ms = 300"));
    let key = key_of(&s);
    let good = real_route_body(&s);
    let hole = blackhole();
    let bad = tampered(&good, port, hole.addr.port());

    // 1. Nothing cached, bad signature: built-in endpoints.
    let r = fake_route(bad.clone());
    let seen = Seen::default();
    let mut cfg = base("alice", "sig1", s.cert_path()).route(format!("http://{}/v1/route", r.addr), key).on_event(seen.hook());
    cfg.fallback = vec![ep("builtin", s.addr(), "localhost")];
    let c = Client::connect(cfg).await.expect("connects through the built-in endpoint");
    assert!(seen.any(|e| matches!(e, ClientEvent::RouteFailed { why, using } if why.contains("signature") && using.contains("built-in"))));
    assert_eq!(hole.accepted.load(Ordering::SeqCst), 0, "the tampered endpoint was never dialled");
    assert!(matches!(c.refresh_route().await, Err(Error::RouteSignature(_))));
    drop(c);

    // 2. A good copy cached, then only bad answers: the cached copy is used
    //    for the reconnect after the server restarts, past its 1 s TTL.
    let r = fake_route(good.clone());
    let seen = Seen::default();
    let cfg = base("alice", "sig2", s.cert_path())
        .route(format!("http://{}/v1/route", r.addr), key)
        .backoff(BackoffPolicy { base_ms: 100, cap_ms: 500, jitter: 0.5 })
        .on_event(seen.hook());
    let c = Client::connect(cfg).await.expect("connects via the route");
    *r.body.lock().unwrap() = bad;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tokio::task::block_in_place(|| {
        s.kill9();
        s.restart();
    });
    let ack = tokio::time::timeout(Duration::from_secs(20), c.send_to_user("bob", b"after restart")).await.expect("sent").unwrap();
    assert_eq!(ack.status, 0);
    assert!(c.counters().connects.load(Ordering::SeqCst) >= 2, "reconnected");
    assert!(seen.any(|e| matches!(e, ClientEvent::RouteFailed { why, using } if why.contains("signature") && using.contains("cached"))));
    assert_eq!(hole.accepted.load(Ordering::SeqCst), 0);
}

/// The route is refreshed at 0.75 × TTL in the background: a slow route
/// service delays no send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_at_three_quarters_ttl_does_not_delay_sends() {
    let s = Server::start(Config::default().extra("[route]\nttl_s = 2"));
    let key = key_of(&s);
    let r = fake_route(real_route_body(&s));
    let cfg = base("alice", "refresh", s.cert_path()).route(format!("http://{}/v1/route", r.addr), key);
    let c = Client::connect(cfg).await.expect("connects");
    // From now on the route service takes 1.5 s to answer.
    *r.delay.lock().unwrap() = Duration::from_millis(1500);
    let first = r.hits.lock().unwrap()[0];
    let mut worst = Duration::ZERO;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(3000) {
        let t = Instant::now();
        let ack = c.send(Target::User("bob".into()), b"tick").await.unwrap();
        assert_eq!(ack.status, 0);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hits = r.hits.lock().unwrap().clone();
    assert!(hits.len() >= 2, "a background refresh happened: {hits:?}");
    let at = hits[1] - first;
    assert!(at >= Duration::from_millis(1300) && at < Duration::from_millis(2400), "refresh at {at:?}, expected 1.5 s (0.75 × 2 s)");
    assert!(worst < Duration::from_millis(1000), "a send waited {worst:?} while the refresh took 1.5 s");
    assert!(c.route_fetches() >= 1);
}

/// The server is killed (-9) and restarted mid-conversation: every SEND is
/// answered with status 0 and every message arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_conversation_loses_and_duplicates_nothing() {
    let port = free_port();
    let mut s = Server::start(Config::default().durable("always").listen(&format!("127.0.0.1:{port}")));
    let backoff = BackoffPolicy { base_ms: 100, cap_ms: 800, jitter: 0.5 };
    let mk = |user: &str| {
        let mut c = base(user, "phone", s.cert_path()).backoff(backoff.clone());
        c.fallback = vec![ep("node", s.addr(), "localhost")];
        c
    };
    let alice = Arc::new(Client::connect(mk("alice")).await.unwrap());
    let mut bob = Client::connect(mk("bob")).await.unwrap();
    const N: usize = 60;
    let received = Arc::new(Mutex::new(Vec::new()));
    let rx = received.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = bob.recv().await {
            let done = {
                let mut r = rx.lock().unwrap();
                r.push((m.seq, String::from_utf8_lossy(&m.payload).to_string()));
                r.len() >= N
            };
            if done {
                break;
            }
        }
        bob
    });
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..N {
        let fut = alice.send(Target::User("bob".into()), format!("m{i}"));
        sends.spawn(fut);
        tokio::time::sleep(Duration::from_millis(15)).await;
        if i == N / 3 {
            tokio::task::block_in_place(|| {
                s.kill9();
                s.restart();
            });
        }
    }
    let all = tokio::time::timeout(Duration::from_secs(40), async {
        let mut acks = Vec::new();
        while let Some(r) = sends.join_next().await {
            acks.push(r.unwrap().expect("every send resolves"));
        }
        acks
    })
    .await
    .expect("all SENDACKs within 40 s");
    assert!(all.iter().all(|a| a.status == 0), "{all:?}");
    let bob = tokio::time::timeout(Duration::from_secs(40), reader).await.expect("all messages arrive").unwrap();
    let got = received.lock().unwrap().clone();
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>(), "dense, in order, each once");
    let mut payloads: Vec<String> = got.iter().map(|(_, p)| p.clone()).collect();
    payloads.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(payloads, want, "every message stored once: no loss, no duplicate");
    eprintln!(
        "restart: alice reconnects {}, resent sends {}; bob duplicate pushes dropped {}",
        alice.counters().connects.load(Ordering::SeqCst),
        alice.counters().resent_sends.load(Ordering::SeqCst),
        bob.counters().duplicate_pushes.load(Ordering::SeqCst)
    );
    assert!(alice.counters().connects.load(Ordering::SeqCst) >= 2);
}

/// Certificate pinning: the server's leaf SHA-256 connects, any other pin
/// fails the TLS handshake (and with it every attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_pin() {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let s = Server::start(Config::default());
    let der = rustls::pki_types::CertificateDer::from_pem_file(s.cert_path()).unwrap();
    let pin: [u8; 32] = sha2::Sha256::digest(der.as_ref()).into();
    let mk = |pin: [u8; 32]| {
        let mut c = ClientConfig::new("pinned", TokenSource::Static(token("alice"))).trust(Trust::PinSha256(pin));
        // By IP with no name at all: the pin is what is checked.
        c.fallback = vec![Endpoint::fallback(0, &s.addr().to_string()).unwrap()];
        c
    };
    let c = Client::connect(mk(pin)).await.expect("the right pin connects");
    assert_eq!(c.send_to_user("bob", b"pinned").await.unwrap().status, 0);
    let mut wrong = pin;
    wrong[0] ^= 0xff;
    match Client::connect(mk(wrong)).await {
        Err(Error::AllEndpointsFailed(why)) => assert!(why.contains("TLS"), "{why}"),
        other => panic!("a wrong pin must fail: {:?}", other.err()),
    }
}
