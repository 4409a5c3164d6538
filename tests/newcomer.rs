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

/// `config default` and docs/durability.md say the same about what each
/// fsync policy loses.
#[test]
fn fsync_comments_agree_with_readme() {
    let o = ringgate(&["config", "default"], Path::new("."));
    let text = String::from_utf8(o.stdout).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/durability.md")).unwrap();
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

// ---------------------------------------------------------------------------
// The README's quick start and docs/admin.md's examples, run as written
// ---------------------------------------------------------------------------

/// The fenced ```sh blocks of `section` (a `## ` heading) of a Markdown
/// file, one command per entry (backslash continuations joined).
fn sh_blocks(file: &str, section: Option<&str>) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let body = match section {
        Some(h) => {
            let at = text.find(&format!("\n## {h}\n")).unwrap_or_else(|| panic!("{file} has no '## {h}'"));
            let rest = &text[at + 4..];
            &rest[..rest.find("\n## ").unwrap_or(rest.len())]
        }
        None => text.as_str(),
    };
    let mut cmds = Vec::new();
    let mut inside = false;
    let mut cont = String::new();
    for line in body.lines() {
        if line.starts_with("```") {
            inside = line == "```sh";
            continue;
        }
        if !inside || line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(l) = line.strip_suffix('\\') {
            cont.push_str(l);
            continue;
        }
        cont.push_str(line);
        cmds.push(std::mem::take(&mut cont));
    }
    cmds
}

/// A network namespace with loopback up, deleted on drop: the documented
/// commands use the default ports (7443, 7080), which must not collide with
/// anything else on the machine.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: not root (a network namespace for the default ports needs root; CI runs as root)");
            return None;
        }
        let name = format!("rg-newcomer-{}-{tag}", std::process::id());
        let o = Command::new("ip").args(["netns", "add", &name]).output().expect("`ip` (iproute2) is needed; .ci/run installs it");
        assert!(o.status.success(), "ip netns add {name}: {}", stderr(&o));
        let ns = Netns(name);
        let o = ns.bash("ip link set lo up", Path::new("/"));
        assert!(o.status.success(), "lo up: {}", stderr(&o));
        Some(ns)
    }

    fn cmd(&self, line: &str, cwd: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, "bash", "-c", line]).current_dir(cwd).env("NO_COLOR", "1");
        c
    }

    fn bash(&self, line: &str, cwd: &Path) -> Output {
        self.cmd(line, cwd).output().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).output();
    }
}

/// A directory where `target/release/ringgate` and
/// `target/release/ringgate-client` are the binaries under test, as in a
/// checkout after `cargo build --release`.
fn checkout_like() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bins = Path::new(env!("CARGO_BIN_EXE_ringgate")).parent().unwrap().to_path_buf();
    assert!(
        bins.join("ringgate-client").exists(),
        "{} is missing: build it (`cargo build --release --workspace`, or cargo test --workspace does)",
        bins.join("ringgate-client").display()
    );
    std::fs::create_dir(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(&bins, dir.path().join("target/release")).unwrap();
    dir
}

/// Runs a line that ends in `&` (the gateway) as written, records its pid,
/// and waits until the gateway's log says it listens.
fn start_background(ns: &Netns, line: &str, cwd: &Path) -> u32 {
    // Not `output()`: the background process keeps the shell's stdout
    // open, so reading it to the end would wait for the gateway to exit.
    let st = ns.cmd(&format!("{line}\necho $! > .bg.pid"), cwd).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().unwrap();
    assert!(st.success(), "{line}: {st:?}");
    let pid: u32 = std::fs::read_to_string(cwd.join(".bg.pid")).unwrap().trim().parse().unwrap();
    let deadline = std::time::Instant::now() + STARTUP;
    loop {
        let log = std::fs::read_to_string(cwd.join("ringgate.log")).unwrap_or_default();
        if log.contains("admin API") && log.contains("listening") {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway did not start:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A child's output lines, collected on a thread.
fn lines_of(r: impl std::io::Read + std::marker::Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `want`; returns every line seen meanwhile.
fn expect_line(rx: &std::sync::mpsc::Receiver<String>, want: &str, what: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
                if l.contains(want) {
                    return seen;
                }
            }
            Err(_) => panic!("{what}: no line with {want:?}; saw:\n{seen}"),
        }
    }
}

/// The README's quick start, run as written: the build command builds
/// every binary the other commands use (checked against the workspace's
/// default members: running cargo inside cargo test would rebuild with
/// other features), the tokens are minted into files, the gateway starts
/// in the background, bob and alice chat both ways (each `chat` prints its
/// connect line without -v), `send` gets a msg_id, `listen --count 2`
/// prints bob's inbox; then an operator's kick shows in bob's chat.
#[test]
fn quick_start_runs_verbatim() {
    let cmds = sh_blocks("README.md", Some("Quick start"));
    assert!(cmds.len() >= 8, "{cmds:?}");
    // `cargo build --release` must build what the quick start runs.
    assert_eq!(cmds[0], "cargo build --release");
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap()).unwrap();
    let default: Vec<&str> = manifest["workspace"]["default-members"].as_array().expect("workspace.default-members").iter().filter_map(|v| v.as_str()).collect();
    for (bin, member) in [("target/release/ringgate ", "."), ("target/release/ringgate-client ", "client")] {
        assert!(cmds.iter().any(|c| c.contains(bin)), "the quick start no longer runs {bin}");
        assert!(default.contains(&member), "`cargo build --release` does not build {bin}: {member} not in default-members {default:?}");
    }
    for c in &cmds {
        assert!(!c.contains("--token \"") && !c.contains("--token $"), "a token on a command line: {c}");
    }
    let Some(ns) = Netns::create("qs") else { return };
    let dir = checkout_like();
    let cwd = dir.path();

    let mut gateway = None;
    let mut chats: Vec<(std::process::Child, std::sync::mpsc::Receiver<String>, std::sync::mpsc::Receiver<String>)> = Vec::new();
    let mut ran = Vec::new();
    for c in &cmds[1..] {
        if c.trim_end().ends_with('&') || c.contains(" & ") || c.contains("&  ") {
            gateway = Some(start_background(&ns, c, cwd));
        } else if c.contains(" chat ") {
            let mut child = ns.cmd(c, cwd).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
            let out = lines_of(child.stdout.take().unwrap());
            let err = lines_of(child.stderr.take().unwrap());
            // Connected (printed without -v): the next terminal may start.
            expect_line(&err, "(tls://127.0.0.1:7443)", c);
            chats.push((child, out, err));
            if chats.len() == 2 {
                // bob's terminal first, then alice's (as the README orders them).
                use std::io::Write;
                let (bob, alice) = chats.split_at_mut(1);
                writeln!(alice[0].0.stdin.as_mut().unwrap(), "hi bob").unwrap();
                expect_line(&bob[0].1, "1\talice\thi bob", "bob's chat");
                writeln!(bob[0].0.stdin.as_mut().unwrap(), "hi alice").unwrap();
                expect_line(&alice[0].1, "1\tbob\thi alice", "alice's chat");
            }
        } else {
            let o = ns.bash(c, cwd);
            assert!(o.status.success(), "{c}\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), stderr(&o));
            ran.push((c.clone(), String::from_utf8_lossy(&o.stdout).into_owned()));
        }
    }
    assert!(gateway.is_some() && chats.len() == 2, "the quick start starts a gateway and two chats: {cmds:?}");
    let send = ran.iter().find(|(c, _)| c.contains(" send ")).expect("a send command");
    assert!(send.1.starts_with("msg_id="), "{send:?}");
    let listen = ran.iter().find(|(c, _)| c.contains(" listen ")).expect("a listen command");
    assert_eq!(listen.1, "1\talice\thi bob\n2\talice\thello from send\n", "{listen:?}");
    expect_line(&chats[0].1, "2\talice\thello from send", "bob's chat gets the send");

    // An operator's kick is visible in chat without -v, and chat comes back.
    let o = ns.bash(r#"curl -s -X DELETE -H "Authorization: Bearer $(cat ringgate-data/admin-token)" http://127.0.0.1:7080/v1/users/bob/connections"#, cwd);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"closed\":"), "{}", String::from_utf8_lossy(&o.stdout));
    let seen = expect_line(&chats[0].2, "closed by operator", "bob's chat shows the kick");
    assert!(seen.contains("disconnected"), "{seen}");
    expect_line(&chats[0].2, "reconnecting", "bob's chat says it reconnects");
    expect_line(&chats[0].2, "(tls://127.0.0.1:7443)", "bob's chat is back");

    for (mut child, _, _) in chats {
        drop(child.stdin.take()); // end of input: chat exits 0
        let st = child.wait().unwrap();
        assert!(st.success(), "chat exited {st:?}");
    }
    if let Some(pid) = gateway {
        // SAFETY: kill(2) on a pid this test started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}

/// Every example of docs/admin.md, run as written (curl, the shell
/// variables they set) against a gateway started with no configuration
/// from the directory they run in: each must succeed and no answer may be
/// an error. Then a muted user's send reads "muted" in the CLI and counts
/// as `reason="muted"`.
#[test]
fn admin_examples_run_verbatim() {
    let cmds = sh_blocks("docs/admin.md", None);
    assert!(cmds.iter().any(|c| c.contains("/mute")) && cmds.iter().any(|c| c.contains("to_group")), "{cmds:?}");
    // The group exists before anything is published to it.
    let put = cmds.iter().position(|c| c.contains("-X PUT $A/v1/groups/team")).expect("a group PUT");
    let publish = cmds.iter().position(|c| c.contains("\"to_group\": \"team\"")).expect("a group publish");
    assert!(put < publish, "the group publish comes before the group exists");
    let Some(ns) = Netns::create("admin") else { return };
    let dir = checkout_like();
    let cwd = dir.path();
    let pid = start_background(&ns, "target/release/ringgate serve 2>ringgate.log &", cwd);
    // One shell, so the variables the examples set carry over; after each
    // example its status and a marker.
    let mut script = String::new();
    for (i, c) in cmds.iter().enumerate() {
        script.push_str(&format!("{c}\necho; echo \"@@{i} rc=$?\"\n"));
    }
    let o = ns.bash(&script, cwd);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut from = 0;
    for (i, c) in cmds.iter().enumerate() {
        let marker = format!("@@{i} rc=");
        let at = out[from..].find(&marker).map(|a| a + from).unwrap_or_else(|| panic!("{c} did not finish:\n{out}\n{}", stderr(&o)));
        let answer = &out[from..at];
        let rc = out[at + marker.len()..].split_whitespace().next().unwrap_or("");
        assert_eq!(rc, "0", "{c} failed:\n{answer}\n{}", stderr(&o));
        // An ADMIN.md error body is JSON `{"error": ...}` (a metrics label
        // `result="error"` is not one).
        assert!(!answer.contains("\"error\":"), "{c} answered an error: {answer}");
        if c.contains("/mute") && c.contains("date +%s") {
            let until: u64 = answer.split("\"until_ms\":").nth(1).and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next()).and_then(|n| n.parse().ok()).unwrap_or(0);
            assert!(until > unix_now_ms() + 3_000_000, "the mute example must mute (until in the future): {answer}");
        }
        if c.contains("$A/v1/users/mallory") && !c.contains("/mute") {
            assert!(!answer.contains("\"muted_until_ms\":0"), "mallory is muted at this point: {answer}");
        }
        if c.contains("/v1/messages/$M") {
            assert!(answer.contains("\"recipients\""), "{answer}");
        }
        from = at + marker.len();
    }
    // A muted user's client SEND: SENDACK 2, read as "muted", counted.
    let o = ns.bash(
        r#"H="Authorization: Bearer $(cat ringgate-data/admin-token)"
curl -s -H "$H" -X PUT http://127.0.0.1:7080/v1/users/mallory/mute -d "{\"until_ms\": $(( ($(date +%s) + 60) * 1000 ))}" >/dev/null
target/release/ringgate token --user mallory > mallory.token
target/release/ringgate-client --endpoint 127.0.0.1:7443 --ca ringgate-data/dev-cert.pem --token-file mallory.token send --to bob "hi"
echo "rc=$?"
curl -s http://127.0.0.1:7080/metrics | grep 'ringgate_rejections_total{reason="muted"}'"#,
        cwd,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("status=2 (muted") && out.contains("rc=1"), "{out}\n{}", stderr(&o));
    assert!(out.contains("ringgate_rejections_total{reason=\"muted\"} 1"), "{out}");
    // SAFETY: kill(2) on a pid this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// `config check` reports unknown keys, values of the wrong type and enum
/// values not accepted together with the semantic problems, each with its
/// path and what is accepted; a syntax error names its line with a hint.
#[test]
fn config_check_reports_unknown_keys_and_bad_values_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[server]\nlistne = \"0.0.0.0:7443\"\ndriver = \"epoll\"\nbacklog = 0\n[store]\nfsync = \"sometimes\"\n[sesion]\nheartbeat_s = 5\n").unwrap();
    let o = ringgate(&["config", "check", f.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for want in [
        "5 problems",
        "unknown key server.listne (did you mean listen?)",
        "server.driver = \"epoll\" is not accepted; one of: \"auto\", \"uring\", \"legacy\"",
        "store.fsync = \"sometimes\" is not accepted; one of: \"always\", \"interval\", \"never\"",
        "unknown key sesion (did you mean session?)",
        "server.backlog must be at least 1",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // `serve` refuses the same file, naming every problem on one line.
    let o = ringgate(&["serve", "--config", f.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("server.listne") && e.contains("store.fsync") && e.contains("sesion"), "{e}");
    // A syntax error: its line, the line itself, and a hint.
    std::fs::write(&f, "[server]\nworkers = 2\nlisten = 0.0.0.0:7443\n").unwrap();
    let o = ringgate(&["config", "check", f.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("line 3") && e.contains("hint: strings need double quotes: listen = \"0.0.0.0:7443\""), "{e}");
}

/// A port held by another program (not ringgate): the error names the
/// holder (this test process) and how to stop it, does not suggest
/// `allow_shared_port` (which would not help), and is printed once.
#[test]
fn port_conflicts_name_the_holder_and_only_the_advice_that_applies() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let me = std::process::id();
    for (key, other) in [("listen", "admin_listen"), ("admin_listen", "listen")] {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            format!("[server]\n{key} = \"127.0.0.1:{port}\"\n{other} = \"127.0.0.1:0\"\nworkers = 1\n[store]\ndurability = \"memory\"\ndata_dir = {:?}\n", dir.path().join("d").to_str().unwrap()),
        )
        .unwrap();
        let o = ringgate(&["serve", "--config", f.to_str().unwrap()], dir.path());
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        let lines: Vec<&str> = e.lines().filter(|l| l.contains("already served by")).collect();
        assert_eq!(lines.len(), 1, "the error is printed once:\n{e}");
        let l = lines[0];
        assert!(l.contains(&format!("pid {me}")) && l.contains(&format!("kill {me}")), "{l}");
        assert!(l.contains(&format!("server.{key}")), "{l}");
        assert!(!l.contains("allow_shared_port"), "not ringgate: sharing cannot help: {l}");
    }
    drop(held);
}

/// A request from an origin the gateway does not allow: 403, counted in
/// `ringgate_rejections_total{reason="origin"}`, and logged once (naming
/// the origin and the line to add) however many requests come.
#[test]
fn refused_origins_are_counted_and_logged_once() {
    use std::io::{Read, Write};
    let s = Config::default().tls(false).workers(1).start();
    for _ in 0..5 {
        let mut c = std::net::TcpStream::connect(s.addr()).unwrap();
        write!(c, "GET /v1/route HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n", s.addr()).unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
    let log = s.stderr_tail();
    let at = log.rfind("admin_addr=").expect("admin address in the log") + "admin_addr=".len();
    let admin: std::net::SocketAddr = log[at..].split_whitespace().next().unwrap().parse().unwrap();
    // The core counts a refusal right after writing its 403: poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut c = std::net::TcpStream::connect(admin).unwrap();
        write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut metrics = String::new();
        c.read_to_string(&mut metrics).unwrap();
        if metrics.contains("ringgate_rejections_total{reason=\"origin\"} 5") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = s.stderr_tail();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused an HTTP request from origin")).collect();
    assert_eq!(refusals.len(), 1, "rate-limited to one line:\n{log}");
    assert!(refusals[0].contains("http://evil.example") && refusals[0].contains("allowed_origins = [\"http://evil.example\"]"), "{}", refusals[0]);
}
