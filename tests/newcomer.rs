//! What a new user trips over first, each fixed and kept fixed: `token`
//! from another directory, the start-up hint, a second server on the same
//! port, `config check` reporting everything, `data_dir = ""`, the fsync
//! comments, and the cipher the deploy guide promises.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::*;

fn ringgate(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringgate")).args(args).current_dir(cwd).env("NO_COLOR", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ringgate token` never makes up a secret the server does not use: with
/// no secret in reach it refuses and names the file it looked for; with
/// the server's config it signs with the server's secret and says which.
#[test]
fn token_uses_the_servers_secret_or_refuses() {
    let elsewhere = tempfile::tempdir().unwrap();
    let o = ringgate(&["token", "--user", "alice"], elsewhere.path());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("jwt-secret") && e.contains("does not exist"), "{e}");
    assert!(!elsewhere.path().join("ringgate-data").exists(), "nothing was created");

    // --create-secret is the explicit way to make one.
    let o = ringgate(&["token", "--user", "alice", "--create-secret"], elsewhere.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("created"), "{}", stderr(&o));
    assert!(elsewhere.path().join("ringgate-data/jwt-secret").exists());

    // With the server's config from any directory: the server accepts it.
    let s = Config::default().start();
    let cfg = s.dir().join("ringgate.toml");
    let o = ringgate(&["token", "--config", cfg.to_str().unwrap(), "--user", "carol"], elsewhere.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("auth.jwt_secret in the configuration"), "{}", stderr(&o));
    let tok = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let mut c = s.client();
    let ack = c.connect_frame(&common::Connect::new(tok, "d", 0));
    assert_eq!(ack.status, connack::OK);
}

/// The first-start hint names the config file the server was started with.
#[test]
fn startup_hint_includes_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("my.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n[store]\ndurability = \"memory\"\ndata_dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + STARTUP;
    let mut buf = [0u8; 4096];
    while !seen.contains("listening") && std::time::Instant::now() < deadline {
        use std::io::Read;
        match err.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = seen.lines().find(|l| l.contains("mint a token with")).unwrap_or_else(|| panic!("no hint in:\n{seen}"));
    assert!(line.contains("--config") && line.contains("my.toml"), "{line}");
}

/// A second server on a port another process serves refuses to start and
/// names the holder, unless `server.allow_shared_port = true`.
#[test]
fn second_server_on_a_served_port_refuses() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let first = Config::default().listen(&listen).start();
    let dir = tempfile::tempdir().unwrap();
    let second = Server::spawn(&Config::default().listen(&listen), dir.path());
    let why = match second {
        Ok((mut c, _, _)) => {
            let _ = c.kill();
            panic!("a second server started on {listen}");
        }
        Err(why) => why,
    };
    assert!(why.contains("already served by") && why.contains(&format!("pid {}", first.pid())), "{why}");
    assert!(why.contains("allow_shared_port"), "{why}");
    // Allowed on purpose (zero-downtime restart).
    let dir = tempfile::tempdir().unwrap();
    let text = Config::default().listen(&listen).to_toml(&dir.path().join("data"));
    let text = text.replacen("[server]\n", "[server]\nallow_shared_port = true\n", 1);
    std::fs::write(dir.path().join("shared.toml"), text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["serve", "--config"])
        .arg(dir.path().join("shared.toml"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("listening") {
        use std::io::Read;
        match err.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("listening"), "allow_shared_port = true starts: {seen}");
}

/// `config check` lists every problem at once, including missing or
/// unparsable certificate and key files, and `data_dir = ""`.
#[test]
fn config_check_reports_everything() {
    let dir = tempfile::tempdir().unwrap();
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(&bad_pem, "not a pem\n").unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        format!(
            "[server]\nbacklog = 0\n[session]\nheartbeat_s = 0\n[store]\ndata_dir = \"\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n[[tls.certificates]]\nserver_name = \"x\"\ncert_file = \"/nonexistent/x.pem\"\nkey_file = \"/nonexistent/x.key\"\n[route]\nbackoff_jitter = 2.0\n",
            bad_pem.to_str().unwrap(),
            bad_pem.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = ringgate(&["config", "check", f.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for want in ["server.backlog", "session.heartbeat_s", "store.data_dir must not be empty", "bad.pem", "/nonexistent/x.pem", "route.backoff_jitter", "6 problems"] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // A good file is ok.
    let g = dir.path().join("g.toml");
    std::fs::write(&g, "[server]\nlisten = \"127.0.0.1:7443\"\n").unwrap();
    let o = ringgate(&["config", "check", g.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `config default` and the README say the same about what each fsync
/// policy loses.
#[test]
fn fsync_comments_agree_with_readme() {
    let o = ringgate(&["config", "default"], Path::new("."));
    let text = String::from_utf8(o.stdout).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // interval: power loss loses up to the interval, a process crash nothing.
    assert!(text.contains("a power loss loses up to that much") && text.contains("a process crash nothing"), "{text}");
    assert!(readme.contains("what the last completed interval fsync (`fsync_interval_ms`) covered; may lose up to that much confirmed"));
    // never: the writeback delay, ~30 s, on power loss.
    assert!(text.contains("writeback delay (~30 s)"));
    assert!(readme.contains("keeps what the kernel had written back (~30 s behind)"));
    assert!(!text.contains("a crash loses up to that much"), "the old wording is gone");
}

/// The deploy guide's smoke test names the suite the server really picks
/// for a client that lists AES-256 first (as openssl does).
#[test]
fn deploy_guide_names_the_negotiated_cipher() {
    let s = Config::default().start();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|c| match c.suite() {
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    });
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(s.cert_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let mut sock = std::net::TcpStream::connect(s.addr()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    let name = suite.trim_start_matches("TLS13_");
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/README.md")).unwrap();
    let want = format!("Cipher is TLS_{name}");
    assert!(guide.contains(&want), "deploy/README.md should say {want:?}");
}
