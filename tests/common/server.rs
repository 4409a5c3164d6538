//! The server under test: the real `ringgate` binary started on
//! `127.0.0.1:0` in a temporary directory with a generated config, its
//! `listening` line parsed for the ports, its stderr kept for failure
//! messages, and its shutdown and exit status observed.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Client, ConnAck, TlsOptions, SECRET, STARTUP};

/// The last lines the server wrote to stderr, kept for failure messages.
#[derive(Clone, Default)]
pub struct ServerLog(Arc<Mutex<VecDeque<String>>>);

const LOG_LINES: usize = 200;

impl ServerLog {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == LOG_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }
    pub fn tail(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        for l in q.iter() {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// The few configuration keys tests change; the rest is the contract's
/// example configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub tls: bool,
    pub workers: u32,
    pub heartbeat_s: u16,
    pub handshake_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub max_retries: u32,
    pub inflight_window: u32,
    pub max_frame: u32,
    pub inbox_max_messages: u64,
    pub inbox_max_age_s: u64,
    pub groups: Vec<(String, Vec<String>)>,
    /// "memory" (default here: most tests need no disk) or "durable".
    pub durability: &'static str,
    pub fsync: &'static str,
    pub segment_max_bytes: u64,
    /// `server.driver`: "auto", "uring" or "legacy".
    pub driver: &'static str,
    /// More `key = value` lines per section (`set`), for keys the fields
    /// above do not cover.
    pub extra: Vec<(String, String)>,
    /// `server.listen` (a fixed port survives `restart`).
    pub listen: String,
    /// TOML appended verbatim (whole tables, e.g. `[route]`).
    pub extra_toml: String,
    /// Extra environment for the server process (fault-injection shims).
    pub env: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tls: true,
            workers: 2,
            heartbeat_s: 30,
            handshake_timeout_ms: 10_000,
            ack_timeout_ms: 5_000,
            max_retries: 2,
            inflight_window: 64,
            max_frame: 65_536,
            inbox_max_messages: 10_000,
            inbox_max_age_s: 604_800,
            groups: vec![("team".into(), vec!["alice".into(), "bob".into(), "carol".into()])],
            durability: "memory",
            fsync: "always",
            segment_max_bytes: 64 << 20,
            driver: "auto",
            extra: Vec::new(),
            listen: "127.0.0.1:0".into(),
            extra_toml: String::new(),
            env: Vec::new(),
        }
    }
}

impl Config {
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    pub fn heartbeat_s(mut self, v: u16) -> Self {
        self.heartbeat_s = v;
        self
    }
    pub fn handshake_timeout_ms(mut self, v: u64) -> Self {
        self.handshake_timeout_ms = v;
        self
    }
    pub fn ack_timeout_ms(mut self, v: u64) -> Self {
        self.ack_timeout_ms = v;
        self
    }
    pub fn max_retries(mut self, v: u32) -> Self {
        self.max_retries = v;
        self
    }
    pub fn inflight_window(mut self, v: u32) -> Self {
        self.inflight_window = v;
        self
    }
    pub fn max_frame(mut self, v: u32) -> Self {
        self.max_frame = v;
        self
    }
    pub fn inbox_max_messages(mut self, v: u64) -> Self {
        self.inbox_max_messages = v;
        self
    }
    pub fn inbox_max_age_s(mut self, v: u64) -> Self {
        self.inbox_max_age_s = v;
        self
    }
    /// Durable inboxes with the given fsync policy.
    pub fn durable(mut self, fsync: &'static str) -> Self {
        self.durability = "durable";
        self.fsync = fsync;
        self
    }

    pub fn driver(mut self, d: &'static str) -> Self {
        self.driver = d;
        self
    }

    pub fn segment_max_bytes(mut self, v: u64) -> Self {
        self.segment_max_bytes = v;
        self
    }

    /// Any other key: `section.key = value` (value in TOML syntax).
    pub fn set(mut self, section: &str, line: impl Into<String>) -> Self {
        self.extra.push((section.into(), line.into()));
        self
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    pub fn group(mut self, name: &str, members: &[&str]) -> Self {
        self.groups.retain(|(g, _)| g != name);
        self.groups.push((name.into(), members.iter().map(|m| m.to_string()).collect()));
        self
    }

    /// The TOML file for this configuration with data under `data_dir`.
    pub fn to_toml(&self, data_dir: &Path) -> String {
        // A JSON string literal is a valid TOML basic string.
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let mut t = String::new();
        t += "[server]\n";
        t += &format!("listen = {}\n", q(&self.listen));
        // Each test server gets its own admin port (the default 7080 would collide).
        t += "admin_listen = \"127.0.0.1:0\"\n";
        t += &format!("workers = {}\n", self.workers);
        t += &format!("driver = {}\n", q(self.driver));
        t += "[tls]\n";
        t += &format!("enabled = {}\n", self.tls);
        t += "[auth]\n";
        t += &format!("jwt_secret = {}\n", q(SECRET));
        t += "[session]\n";
        t += &format!("heartbeat_s = {}\n", self.heartbeat_s);
        t += &format!("handshake_timeout_ms = {}\n", self.handshake_timeout_ms);
        t += &format!("ack_timeout_ms = {}\n", self.ack_timeout_ms);
        t += &format!("max_retries = {}\n", self.max_retries);
        t += &format!("inflight_window = {}\n", self.inflight_window);
        t += &format!("max_frame = {}\n", self.max_frame);
        t += "[store]\n";
        t += &format!("data_dir = {}\n", q(&data_dir.to_string_lossy()));
        t += &format!("durability = {}\n", q(self.durability));
        t += &format!("fsync = {}\n", q(self.fsync));
        t += &format!("segment_max_bytes = {}\n", self.segment_max_bytes);
        t += &format!("inbox_max_messages = {}\n", self.inbox_max_messages);
        t += &format!("inbox_max_age_s = {}\n", self.inbox_max_age_s);
        // Extra lines of a section already written go in a repeated header
        // only for sections not written above (TOML forbids repeating one).
        let written = ["server", "tls", "auth", "session", "store"];
        let mut t = t
            .split_inclusive('\n')
            .map(|line| {
                let mut l = line.to_string();
                if let Some(sec) = line.trim().strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                    for (s, extra) in &self.extra {
                        if s == sec {
                            l += extra;
                            l += "\n";
                        }
                    }
                }
                l
            })
            .collect::<String>();
        let mut others: Vec<&str> = self.extra.iter().map(|(s, _)| s.as_str()).filter(|s| !written.contains(s)).collect();
        others.dedup();
        for sec in others {
            t += &format!("[{sec}]\n");
            for (s, extra) in &self.extra {
                if s == sec {
                    t += extra;
                    t += "\n";
                }
            }
        }
        t += "[groups]\n";
        for (g, members) in &self.groups {
            let m: Vec<String> = members.iter().map(|m| q(m)).collect();
            t += &format!("{} = [{}]\n", q(g), m.join(", "));
        }
        t += &self.extra_toml;
        t
    }

    /// Appends TOML tables to the generated file.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// Listens on a fixed address, so a restarted server keeps its port.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.into();
        self
    }

    pub fn start(self) -> Server {
        Server::start(self)
    }
}

/// A running `ringgate serve` child process; killed on drop.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    log: ServerLog,
    pub config: Config,
    cert_path: Option<PathBuf>,
}

/// Removes ANSI escape sequences (should there be any) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Finds `listening addr=IP:PORT` in a log line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let at = line.find("listening addr=")? + "listening addr=".len();
    let rest = &line[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':' || c == '[' || c == ']')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Server {
    /// Starts the server with the contract's default configuration.
    pub fn default_start() -> Server {
        Server::start(Config::default())
    }

    pub fn start(config: Config) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        match Server::spawn(&config, dir.path()) {
            Ok((child, addr, log)) => {
                let cert_path = Server::cert_for(&config, dir.path(), &log);
                Server { child, addr, dir, log, config, cert_path }
            }
            Err(why) => panic!("{why}"),
        }
    }

    fn cert_for(config: &Config, dir: &Path, log: &ServerLog) -> Option<PathBuf> {
        if config.tls {
            let p = dir.join("data").join("dev-cert.pem");
            assert!(p.exists(), "TLS on without a certificate, but {} was not written before listening\nstderr:\n{}", p.display(), log.tail());
            Some(p)
        } else {
            None
        }
    }

    /// Starts `ringgate serve` on `dir`'s config and data directory and
    /// waits for its `listening` line. Err: why it did not come up (exit
    /// status and stderr), for tests that expect a refusal.
    pub fn spawn(config: &Config, dir: &Path) -> Result<(Child, SocketAddr, ServerLog), String> {
        let data_dir = dir.join("data");
        let cfg_path = dir.join("ringgate.toml");
        std::fs::write(&cfg_path, config.to_toml(&data_dir)).expect("write config");

        let log_filter = std::env::var("RINGGATE_TEST_LOG").unwrap_or_else(|_| "info".into());
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", log_filter)
            .env("NO_COLOR", "1")
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringgate");

        let log = ServerLog::default();
        let (tx, rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("piped stderr");
        let thread_log = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                        thread_log.push(line.clone());
                        // After startup nobody listens; keep draining anyway.
                        let _ = tx.send(line);
                    }
                }
            }
        });

        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = parse_listening(&line) {
                        return Ok((child, a, log));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "server printed no `listening addr=` line within {STARTUP:?}\nconfig:\n{}\nstderr:\n{}",
                        config.to_toml(&data_dir),
                        log.tail()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    // The reader thread may still be pushing the last lines.
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(format!(
                        "server exited before listening ({status:?})\nconfig:\n{}\nstderr:\n{}",
                        config.to_toml(&data_dir),
                        log.tail()
                    ));
                }
            }
        }
    }

    /// The server's temporary directory (config and `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGKILL, as a crash would: no shutdown work at all.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same config and data directory (after
    /// `kill9` or a clean exit).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        match Server::spawn(&self.config, self.dir.path()) {
            Ok((child, addr, log)) => {
                self.child = child;
                self.addr = addr;
                self.log = log;
                self.cert_path = Server::cert_for(&self.config, self.dir.path(), &self.log);
            }
            Err(why) => panic!("restart failed: {why}"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cert_path(&self) -> &Path {
        self.cert_path.as_deref().expect("server runs without TLS")
    }

    pub fn stderr_tail(&self) -> String {
        self.log.tail()
    }

    pub fn log(&self) -> ServerLog {
        self.log.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with the server's stderr) when the process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("server process exited: {status}\nstderr:\n{}", self.log.tail());
        }
    }

    /// Panics when the server's recent stderr reports a panic.
    pub fn assert_no_panic(&self) {
        let tail = self.log.tail();
        assert!(!tail.contains("panicked"), "the server logged a panic:\n{tail}");
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed: {}", io::Error::last_os_error());
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new connection with the transport the server is configured for
    /// (TLS 1.2 or 1.3 with ALPN `ringgate/1`, or plain TCP).
    pub fn client(&self) -> Client {
        let r = if self.config.tls {
            Client::connect_tls(self.addr, self.cert_path(), TlsOptions::default())
        } else {
            Client::connect_plain(self.addr)
        };
        let mut c = r.unwrap_or_else(|e| panic!("connect to {}: {e}\nstderr:\n{}", self.addr, self.log.tail()));
        c.log = Some(self.log.clone());
        c
    }

    pub fn client_tls(&self, opts: TlsOptions) -> Client {
        let mut c = Client::connect_tls(self.addr, self.cert_path(), opts)
            .unwrap_or_else(|e| panic!("TLS connect to {}: {e}\nstderr:\n{}", self.addr, self.log.tail()));
        c.log = Some(self.log.clone());
        c
    }

    /// Connects and logs in; asserts CONNACK status 0.
    pub fn login(&self, user: &str, device: &str, last_seq: u64) -> (Client, ConnAck) {
        let mut c = self.client();
        let ack = c.login(user, device, last_seq);
        (c, ack)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- ringgate stderr (last {LOG_LINES} lines) ----\n{}---- end of ringgate stderr ----", self.log.tail());
        }
    }
}
