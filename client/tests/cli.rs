//! The `ringgate-client` binary against a real `ringgate serve` (the
//! server binary built in the same target directory, as `cargo test
//! --workspace` does): send, listen, group send, a refused send, chat,
//! and a route whose first endpoint never answers TLS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CLIENT: &str = env!("CARGO_BIN_EXE_ringgate-client");
const WAIT: Duration = Duration::from_secs(20);

fn server_bin() -> PathBuf {
    let p = Path::new(CLIENT).with_file_name("ringgate");
    assert!(p.exists(), "{} is missing: these tests run the server binary; build it (cargo test --workspace does)", p.display());
    p
}

/// A running server in a temp dir; killed on drop.
struct Srv {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Srv {
    fn start(extra: impl FnOnce(u16) -> String) -> Srv {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n[auth]\njwt_secret = \"cli-test-secret-0123456789\"\n[store]\ndurability = \"memory\"\ndata_dir = {:?}\n[groups]\nteam = [\"alice\", \"bob\"]\n{}",
            dir.path().join("data").to_str().unwrap(),
            extra(port)
        );
        std::fs::write(dir.path().join("r.toml"), cfg).unwrap();
        let mut child = Command::new(server_bin())
            .args(["serve", "--config"])
            .arg(dir.path().join("r.toml"))
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut r = BufReader::new(child.stderr.take().unwrap());
        let deadline = Instant::now() + WAIT;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0 && Instant::now() < deadline, "server did not start");
            if line.contains("listening addr=") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        Srv { child, dir, port }
    }

    fn token(&self, user: &str) -> String {
        let o = Command::new(server_bin())
            .args(["token", "--config"])
            .arg(self.dir.path().join("r.toml"))
            .args(["--user", user])
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    fn cert(&self) -> String {
        self.dir.path().join("data/dev-cert.pem").to_str().unwrap().to_string()
    }

    /// Global options for `user` through the fallback endpoint.
    fn args(&self, user: &str) -> Vec<String> {
        vec!["--endpoint".into(), format!("127.0.0.1:{}", self.port), "--ca".into(), self.cert(), "--token".into(), self.token(user)]
    }
}

fn run(args: &[String]) -> Output {
    let mut child = Command::new(CLIENT).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("ringgate-client {args:?} did not exit: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with(mut a: Vec<String>, more: &[&str]) -> Vec<String> {
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

#[test]
fn send_listen_group_and_refusal() {
    let s = Srv::start(|_| String::new());
    // Messages sent while bob is offline wait in his inbox.
    let o = run(&with(s.args("alice"), &["send", "--to", "bob", "hello bob"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("msg_id=") && out.trim()["msg_id=".len()..].parse::<u64>().is_ok(), "{out}");
    let o = run(&with(s.args("alice"), &["send", "--group", "team", "hi team"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&with(s.args("bob"), &["listen", "--count", "2"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "1\talice\thello bob\n2\talice\thi team\n");
    // A non-zero SENDACK is printed and exits 1.
    let o = run(&with(s.args("alice"), &["send", "--group", "nosuch", "x"]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), "status=1 (no such target)");
    // Long options are exact: no prefixes.
    let o = run(&with(s.args("alice"), &["--endp", "x", "send", "--to", "bob", "x"]));
    assert_eq!(o.status.code(), Some(2));
    // No trust given: a clear refusal, not a TLS error.
    let o = run(&["--endpoint".to_string(), format!("127.0.0.1:{}", s.port), "--token".into(), "t".into(), "send".into(), "--to".into(), "b".into(), "x".into()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--insecure"));
}

#[test]
fn chat_sends_lines_and_prints_messages() {
    let s = Srv::start(|_| String::new());
    let mut listen = Command::new(CLIENT).args(with(s.args("bob"), &["listen", "--count", "2"])).stdout(Stdio::piped()).spawn().unwrap();
    let mut chat = Command::new(CLIENT)
        .args(with(s.args("alice"), &["chat", "--to", "bob"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = chat.stdin.take().unwrap();
        stdin.write_all(b"first line\nsecond line\n").unwrap();
        // Bob answers alice while her chat is open.
        let o = run(&with(s.args("bob"), &["send", "--to", "alice", "hi alice"]));
        assert!(o.status.success());
        std::thread::sleep(Duration::from_millis(800));
    } // stdin closed: chat ends
    let deadline = Instant::now() + WAIT;
    while chat.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "chat did not exit after EOF");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut chat_out = String::new();
    chat.stdout.take().unwrap().read_to_string(&mut chat_out).unwrap();
    assert!(chat_out.contains("1\tbob\thi alice"), "{chat_out}");
    while listen.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "listen did not get both lines");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut got = String::new();
    listen.stdout.take().unwrap().read_to_string(&mut got).unwrap();
    assert_eq!(got, "1\talice\tfirst line\n2\talice\tsecond line\n");
}

/// The route lists a first endpoint that accepts TCP and never answers
/// TLS: `send` and `listen` still work, connected in about one stagger.
#[test]
fn through_a_route_whose_first_endpoint_is_dead() {
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming().flatten() {
            held.push(s);
        }
    });
    let s = Srv::start(|port| {
        format!(
            "[route]\nstagger_ms = 1000\n[[route.endpoints]]\nid = \"dead\"\ntransport = \"tls\"\nhost = \"localhost\"\naddr = \"127.0.0.1\"\nport = {hole_port}\n[[route.endpoints]]\nid = \"good\"\ntransport = \"tls\"\nhost = \"localhost\"\naddr = \"127.0.0.1\"\nport = {port}\npriority = 1\n"
        )
    });
    let key = std::fs::read_to_string(s.dir.path().join("data/route-key.pub")).unwrap();
    let route = |user: &str| {
        vec![
            "--route".to_string(),
            format!("https://127.0.0.1:{}/v1/route", s.port),
            "--route-key".into(),
            key.trim().into(),
            "--ca".into(),
            s.cert(),
            "--token".into(),
            s.token(user),
            "-v".into(),
        ]
    };
    let t0 = Instant::now();
    let o = run(&with(route("alice"), &["send", "--to", "bob", "via route"]));
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("attempt dead") && err.contains("good (tls://127.0.0.1"), "{err}");
    let won = err.lines().find(|l| l.contains("won after")).unwrap_or_else(|| panic!("{err}"));
    let ms: u64 = won.rsplit("won after ").next().unwrap().trim_end_matches(" ms").parse().unwrap();
    assert!((1000..3000).contains(&ms), "won after {ms} ms: about one stagger (1000 ms), not an attempt timeout");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let o = run(&with(route("bob"), &["listen", "--count", "1"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "1\talice\tvia route\n");
}

/// A refused token says why, read from the token itself: expired (with
/// its expiry), signed with another secret, or not a token at all (before
/// dialling).
#[test]
fn refused_tokens_say_why() {
    use base64::Engine;
    let s = Srv::start(|_| String::new());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut base = s.args("alice");
    base.truncate(base.len() - 2); // without --token
    // Expired an hour ago (2025-12-05T00:00:00Z is fixed: the message shows it).
    let expired = format!("{}.{}.{}", b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#), b64.encode(r#"{"sub":"alice","exp":1764892800}"#), b64.encode("x"));
    let o = run(&with(base.clone(), &["--token", &expired, "send", "--to", "bob", "x"]));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("CONNACK 2") && e.contains("expired at 2025-12-05T00:00:00Z"), "{e}");
    // Another secret: a token minted by another server's config.
    let other = s.dir.path().join("other.toml");
    std::fs::write(&other, "[auth]\njwt_secret = \"some-other-secret-0123456789\"\n").unwrap();
    let o = Command::new(server_bin()).args(["token", "--config"]).arg(&other).args(["--user", "alice"]).output().unwrap();
    let foreign = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = run(&with(base.clone(), &["--token", &foreign, "send", "--to", "bob", "x"]));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("CONNACK 2") && e.contains("signed with another secret") && !e.contains("expired at"), "{e}");
    // Not a token: refused locally, the server never sees it.
    let o = run(&with(base, &["--token", "garbage", "send", "--to", "bob", "x"]));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("the token is malformed") && !e.contains("CONNACK"), "{e}");
}
