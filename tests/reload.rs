//! Operating without restarts, against the real binary: a certificate swapped under a live connection, a broken certificate refused by a reload, token keys rotated across HS256/ES256/RS256/EdDSA with `kid` (and algorithm confusion refused), a limit tightened live, and two servers sharing a ticket key resuming each other's TLS sessions.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;

// ---- helpers ----------------------------------------------------------------

/// Finds the last `admin_addr=IP:PORT` in a log.
fn admin_addr(log: &str) -> SocketAddr {
    let at = log.rfind("admin_addr=").unwrap_or_else(|| panic!("no admin_addr in the log:\n{log}")) + "admin_addr=".len();
    let rest = &log[at..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).unwrap_or(rest.len());
    rest[..end].parse().expect("admin addr")
}

/// One sample of `/metrics` (0 when absent).
fn metric(admin: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(admin).expect("admin connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn reloads(admin: SocketAddr) -> (f64, f64) {
    (
        metric(admin, "ringgate_config_reloads_total{result=\"ok\"}"),
        metric(admin, "ringgate_config_reloads_total{result=\"error\"}"),
    )
}

fn sighup(pid: u32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill(SIGHUP): {}", std::io::Error::last_os_error());
}

/// Waits until the reload counters read `(ok, error)`.
#[track_caller]
fn wait_reloads(admin: SocketAddr, want: (f64, f64), log: &ServerLog) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = reloads(admin);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("reload counters (ok, error) = {got:?}, want {want:?}\n{}", log.tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rewrites the server's config file (the one it was started with).
fn rewrite(dir: &Path, cfg: &Config) {
    std::fs::write(dir.join("ringgate.toml"), cfg.to_toml(&dir.join("data"))).expect("rewrite config");
}

fn q(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).unwrap()
}

/// A self-signed certificate for localhost, written as `name.pem` and `name.key`.
fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&c, made.cert.pem()).unwrap();
    std::fs::write(&k, made.key_pair.serialize_pem()).unwrap();
    (c, k, made.cert.der().to_vec())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A key pair as (PKCS#8 private PEM, SPKI public PEM) files.
struct KeyFiles {
    private: PathBuf,
    public: PathBuf,
}

fn write_keys(dir: &Path, name: &str, alg: &str) -> KeyFiles {
    let (private, public) = match alg {
        "ES256" | "EdDSA" => {
            let a = if alg == "ES256" { &rcgen::PKCS_ECDSA_P256_SHA256 } else { &rcgen::PKCS_ED25519 };
            let kp = rcgen::KeyPair::generate_for(a).unwrap();
            (kp.serialize_pem(), kp.public_key_pem())
        }
        "RS256" => {
            use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
            use aws_lc_rs::signature::KeyPair as _;
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let private: Pkcs8V1Der = kp.as_der().unwrap();
            let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
            (pem("PRIVATE KEY", private.as_ref()), pem("PUBLIC KEY", public.as_ref()))
        }
        other => panic!("{other}"),
    };
    let k = KeyFiles { private: dir.join(format!("{name}.key")), public: dir.join(format!("{name}.pub.pem")) };
    std::fs::write(&k.private, private).unwrap();
    std::fs::write(&k.public, public).unwrap();
    k
}

/// `ringgate token --kid` through the real binary.
fn mint(dir: &Path, user: &str, kid: &str, key_file: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("token")
        .arg("--config")
        .arg(dir.join("ringgate.toml"))
        .args(["--user", user, "--kid", kid, "--key-file"])
        .arg(key_file)
        .output()
        .expect("run ringgate token");
    assert!(out.status.success(), "ringgate token --kid {kid}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn jwt(header: serde_json::Value, user: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let claims = serde_json::json!({"sub": user, "exp": unix_now_s() + 3600});
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn hs256(key: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    use hmac::{Hmac, Mac};
    move |m| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(m);
        mac.finalize().into_bytes().to_vec()
    }
}

/// ES256-signs with a PKCS#8 PEM key, whatever the header says.
fn es256(private: &Path) -> impl Fn(&[u8]) -> Vec<u8> {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(private).unwrap()).unwrap();
    move |m| URL_SAFE_NO_PAD.decode(jsonwebtoken::crypto::sign(m, &key, jsonwebtoken::Algorithm::ES256).unwrap()).unwrap()
}

fn connack(s: &Server, token: String, device: &str) -> (Client, u8) {
    let mut c = s.client();
    let a = c.connect_frame(&Connect::new(token, device, 0));
    (c, a.status)
}

// ---- certificates --------------------------------------------------------------

#[test]
fn certificate_swapped_under_a_live_connection_and_a_broken_one_refused() {
    let s = Server::start(Config::default());
    let admin = admin_addr(&s.stderr_tail());
    assert_eq!(reloads(admin), (0.0, 0.0));
    let started = metric(admin, "ringgate_config_last_reload_timestamp_seconds");
    assert!(started > 1.7e9, "last reload timestamp is the start time: {started}");
    let (mut alice, _) = s.login("alice", "a1", 0);

    let (new_cert, new_key, new_der) = write_cert(s.dir(), "renewed");
    let renewed = s.config.clone().set("tls", format!("cert_file = {}\nkey_file = {}", q(&new_cert), q(&new_key)));
    rewrite(s.dir(), &renewed);
    std::thread::sleep(Duration::from_millis(1100));
    sighup(s.pid());
    wait_reloads(admin, (1.0, 0.0), &s.log());
    assert!(metric(admin, "ringgate_config_last_reload_timestamp_seconds") > started);

    // A new connection sees the new certificate (and only it verifies).
    let mut bob = Client::connect_tls(s.addr(), &new_cert, TlsOptions::default()).expect("handshake with the renewed certificate");
    let served = bob.tls().unwrap().peer_certificates().unwrap()[0].as_ref().to_vec();
    assert_eq!(served, new_der, "a new connection is served the new certificate");
    assert_eq!(bob.login("bob", "b1", 0).status, 0);
    assert!(
        Client::connect_tls(s.addr(), s.cert_path(), TlsOptions::default()).is_err(),
        "the old certificate is no longer served to new connections"
    );
    // The connection from before the reload keeps working, both ways.
    bob.send_ok(1, "alice", b"after the swap");
    alice.expect_push_seq(1, b"after the swap");
    alice.ack(1);
    alice.ping_pong(7);
    alice.send_ok(1, "bob", b"old connection sends");
    bob.expect_push_seq(1, b"old connection sends");

    // A broken certificate: nothing changes, the error is counted, still serving.
    let broken = s.dir().join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n").unwrap();
    rewrite(s.dir(), &s.config.clone().set("tls", format!("cert_file = {}\nkey_file = {}", q(&broken), q(&new_key))));
    sighup(s.pid());
    wait_reloads(admin, (1.0, 1.0), &s.log());
    // A certificate with another certificate's key.
    let (other_cert, _, _) = write_cert(s.dir(), "other");
    rewrite(s.dir(), &s.config.clone().set("tls", format!("cert_file = {}\nkey_file = {}", q(&other_cert), q(&new_key))));
    sighup(s.pid());
    wait_reloads(admin, (1.0, 2.0), &s.log());
    let tail = s.stderr_tail();
    assert!(tail.contains("configuration reload failed") && tail.contains("does not match"), "{tail}");

    let mut carol = Client::connect_tls(s.addr(), &new_cert, TlsOptions::default()).expect("still the renewed certificate");
    assert_eq!(carol.tls().unwrap().peer_certificates().unwrap()[0].as_ref(), &new_der[..]);
    assert_eq!(carol.login("carol", "c1", 0).status, 0);
    alice.ping_pong(8);
    s.assert_no_panic();
}

// ---- token keys ----------------------------------------------------------------

fn keys_toml(entries: &[(&str, &str, &Path)]) -> String {
    let mut t = String::new();
    for (kid, alg, file) in entries {
        let field = if *alg == "HS256" { "secret_file" } else { "public_key_file" };
        t += &format!("[[auth.keys]]\nkid = \"{kid}\"\nalg = \"{alg}\"\n{field} = {}\n", q(file));
    }
    t
}

#[test]
fn token_keys_with_kid_rotate_live_and_alg_confusion_is_refused() {
    let keydir = tempfile::tempdir().unwrap();
    let d = keydir.path();
    let es = write_keys(d, "es", "ES256");
    let rs = write_keys(d, "rs", "RS256");
    let ed = write_keys(d, "ed", "EdDSA");
    let hs = d.join("hs.secret");
    std::fs::write(&hs, "hs-secret-for-kid-0123456789\n").unwrap();
    let first = keys_toml(&[("k-es", "ES256", &es.public), ("k-rs", "RS256", &rs.public), ("k-ed", "EdDSA", &ed.public), ("k-hs", "HS256", &hs)]);
    let s = Config::default().tls(false).extra(&first).start();
    assert!(s.stderr_tail().contains("k-es"), "{}", s.stderr_tail());
    let admin = admin_addr(&s.stderr_tail());

    // Every algorithm, minted by `ringgate token --kid`.
    let mut es_conn = None;
    for (kid, file) in [("k-es", &es.private), ("k-rs", &rs.private), ("k-ed", &ed.private), ("k-hs", &hs)] {
        let t = mint(s.dir(), "alice", kid, file);
        let (c, status) = connack(&s, t, kid);
        assert_eq!(status, connack::OK, "token with kid {kid}");
        if kid == "k-es" {
            es_conn = Some(c);
        }
    }
    let mut es_conn = es_conn.unwrap();
    // No kid: the HS256 jwt_secret, as before.
    assert_eq!(connack(&s, token("alice"), "legacy").1, connack::OK);

    // Refused: an unknown kid, algorithm confusion (the RS256 public key
    // used as an HS256 secret), alg none, an alg that is not the key's, and
    // a signature by another key.
    let rs_pub = std::fs::read(&rs.public).unwrap();
    let es_token = mint(s.dir(), "alice", "k-es", &es.private);
    // The control: the same signing path under the right header is accepted.
    let ok = jwt(serde_json::json!({"alg": "ES256", "kid": "k-es"}), "alice", es256(&es.private));
    assert_eq!(connack(&s, ok, "control").1, connack::OK);
    let refused = [
        ("unknown kid", jwt(serde_json::json!({"alg": "HS256", "kid": "nope"}), "alice", hs256(b"hs-secret-for-kid-0123456789"))),
        ("RS256 public key as HS256 secret", jwt(serde_json::json!({"alg": "HS256", "kid": "k-rs"}), "alice", hs256(&rs_pub))),
        ("alg none", jwt(serde_json::json!({"alg": "none", "kid": "k-es"}), "alice", |_| Vec::new())),
        // A valid ES256 signature by k-es's own key, under a header that says RS256.
        ("alg not the key's", jwt(serde_json::json!({"alg": "RS256", "kid": "k-es"}), "alice", es256(&es.private))),
        ("alg ES256 under an EdDSA kid", jwt(serde_json::json!({"alg": "ES256", "kid": "k-ed"}), "alice", es256(&es.private))),
        ("other key's signature", mint_other_es(d, "alice")),
    ];
    for (what, t) in refused {
        assert_eq!(connack(&s, t, "x").1, connack::BAD_TOKEN, "{what} must get CONNACK 2");
    }

    // Rotate: k-es removed, k-es2 added.
    let es2 = write_keys(d, "es2", "ES256");
    let second = keys_toml(&[("k-es2", "ES256", &es2.public), ("k-rs", "RS256", &rs.public), ("k-ed", "EdDSA", &ed.public), ("k-hs", "HS256", &hs)]);
    let mut rotated = s.config.clone();
    rotated.extra_toml = String::new();
    rewrite(s.dir(), &rotated.extra(&second));
    sighup(s.pid());
    wait_reloads(admin, (1.0, 0.0), &s.log());
    assert_eq!(connack(&s, es_token.clone(), "again").1, connack::BAD_TOKEN, "a removed key refuses new CONNECTs");
    assert_eq!(connack(&s, mint(s.dir(), "alice", "k-es2", &es2.private), "new").1, connack::OK);
    // The connection authenticated with the removed key keeps running until its token expires.
    es_conn.ping_pong(3);
    let (mut bob, _) = s.login("bob", "b1", 0);
    bob.send_ok(1, "alice", b"still here");
    es_conn.expect_push_seq(1, b"still here");

    // A key file that does not parse: the reload is refused, the keys stay.
    std::fs::write(&es2.public, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
    sighup(s.pid());
    wait_reloads(admin, (1.0, 1.0), &s.log());
    assert_eq!(connack(&s, mint(s.dir(), "alice", "k-es2", &es2.private), "kept").1, connack::OK);
    s.assert_no_panic();
}

/// An ES256 token with kid `k-es` signed by a key the server does not know.
fn mint_other_es(dir: &Path, user: &str) -> String {
    let other = write_keys(dir, "es-other", "ES256");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&other.private).unwrap()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("k-es".into());
    jsonwebtoken::encode(&h, &serde_json::json!({"sub": user, "exp": unix_now_s() + 3600}), &key).unwrap()
}

// ---- limits ------------------------------------------------------------------------

#[test]
fn limit_tightened_live_through_ringgate_reload() {
    // Durable: the data directory's LOCK is how `ringgate reload` finds the server.
    let s = Config::default().tls(false).durable("never").start();
    let admin = admin_addr(&s.stderr_tail());
    let (mut alice, _) = s.login("alice", "a1", 0);
    let (_bob, _) = s.login("bob", "b1", 0);
    for id in 1..=5 {
        alice.send_msg(id, "bob", b"x");
    }
    for id in 1..=5 {
        assert_eq!(alice.expect_sendack(id).status, sendack::STORED);
    }

    let tight = s.config.clone().set("limits", "send_rate_per_connection = 1").heartbeat_s(7);
    rewrite(s.dir(), &tight);
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("reload")
        .arg("--config")
        .arg(s.dir().join("ringgate.toml"))
        .output()
        .expect("run ringgate reload");
    assert!(out.status.success(), "ringgate reload: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pid {}", s.pid())));
    wait_reloads(admin, (1.0, 0.0), &s.log());

    // The established connection is held to the new rate at once.
    for id in 6..=10 {
        alice.send_msg(id, "bob", b"x");
    }
    let limited = (6..=10).filter(|id| alice.expect_sendack(*id).status == sendack::RATE_LIMITED).count();
    assert!(limited >= 3, "5 SENDs at a rate of 1/s: {limited} were rate limited");
    // The restart-only key is named, and not applied.
    let tail = s.stderr_tail();
    assert!(tail.contains("needs a restart") && tail.contains("session.heartbeat_s"), "{tail}");
    // Reported only once every core took it (what makes the SENDs above
    // meet the new rate rather than race the cores' mailboxes).
    assert!(!tail.contains("not every core has taken"), "{tail}");
    let (_c, ack) = s.login("carol", "c1", 0);
    assert_eq!(ack.heartbeat_s, 30, "session.heartbeat_s needs a restart");
    s.assert_no_panic();
}

#[test]
fn reload_without_a_running_server_says_so() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("rg.toml");
    std::fs::write(&cfg, format!("[store]\ndata_dir = {}\n", q(&d.path().join("data")))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate")).arg("reload").arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LOCK"), "{err}");
}

// ---- session tickets shared by two servers -------------------------------------------------

/// A server process started with our own certificate (so not `Server`, which expects the dev one).
struct Node {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: ServerLog,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- node stderr ----\n{}", self.log.tail());
        }
    }
}

fn node(cert: &Path, key: &Path, ticket_key: Option<&Path>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = format!("cert_file = {}\nkey_file = {}", q(cert), q(key));
    if let Some(t) = ticket_key {
        tls += &format!("\nticket_key_file = {}", q(t));
    }
    let cfg = Config::default().set("tls", tls);
    let (child, addr, log) = Server::spawn(&cfg, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let admin = admin_addr(&log.tail());
    Node { child, addr, admin, log, _dir: dir }
}

/// Connects, logs in (which also reads the session ticket the server sends
/// after the handshake) and says whether the handshake was a resumption.
fn resumed(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, user: &str) -> bool {
    let mut c = Client::connect_tls_with(addr, cfg.clone(), "localhost").expect("TLS handshake");
    let kind = c.tls().unwrap().handshake_kind();
    let ack = c.connect_frame(&Connect::new(token(user), "d", 0));
    assert_eq!(ack.status, connack::OK);
    c.ping_pong(1);
    kind == Some(rustls::HandshakeKind::Resumed)
}

#[test]
fn servers_sharing_a_ticket_key_resume_each_others_sessions() {
    let shared = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert(shared.path(), "fleet");
    let ticket_key = shared.path().join("ticket.key");
    let a = node(&cert, &key, Some(&ticket_key));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&ticket_key).unwrap().permissions().mode() & 0o777, 0o600, "created 0600");
    let b = node(&cert, &key, Some(&ticket_key));
    let own = node(&cert, &key, None);
    let tls13 = TlsOptions { version: TlsVersion::Tls13, ..TlsOptions::default() };

    // One client session store across both servers.
    let client = tls_config(&cert, tls13);
    assert!(!resumed(a.addr, &client, "alice"), "first contact is a full handshake");
    assert!(resumed(b.addr, &client, "alice"), "B resumes the session A issued");
    assert!(resumed(a.addr, &client, "alice"), "and A the one B issued");
    // Control: a server with its own ticket key cannot.
    let control = tls_config(&cert, tls13);
    assert!(!resumed(a.addr, &control, "bob"));
    assert!(!resumed(own.addr, &control, "bob"), "a server without the shared key does a full handshake");

    // Rotation: A reloads a new key; a ticket sealed with the old key still
    // resumes on A (overlap), and A's new tickets are not B's until B reloads.
    assert!(resumed(b.addr, &client, "alice"));
    std::fs::write(&ticket_key, format!("{}\n", "ab".repeat(32))).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(a.child.id() as libc::pid_t, libc::SIGHUP) }, 0);
    wait_reloads(a.admin, (1.0, 0.0), &a.log);
    assert!(resumed(a.addr, &client, "alice"), "the previous key still decrypts within the overlap");
    assert!(!resumed(b.addr, &client, "alice"), "B has not reloaded the new key yet");
    assert_eq!(unsafe { libc::kill(b.child.id() as libc::pid_t, libc::SIGHUP) }, 0);
    wait_reloads(b.admin, (1.0, 0.0), &b.log);
    assert!(resumed(a.addr, &client, "alice"));
    assert!(resumed(b.addr, &client, "alice"), "after both reloaded, the new key is shared");
}
