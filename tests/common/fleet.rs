//! Fleet test harness shared by `tests/fleet.rs`, `tests/fleet_cluster.rs`, `tests/fleet_admin.rs`
//! and `tests/fleet_failover.rs`: real `redis-server` processes on free
//! ports in temp dirs (`appendonly yes`, `appendfsync always` unless a test
//! asks otherwise), a 3-master Redis Cluster, ringgate nodes configured for
//! them, and the admin API over plain HTTP.
//!
//! Included with `#[path = "common/fleet.rs"] mod fleet_common;` next to
//! `mod common;` (so the other test binaries do not compile it).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

// ---- redis-server --------------------------------------------------------

pub fn redis_server_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RINGGATE_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("redis-server")).find(|p| p.exists())
}

/// The binary, or None (with a message) when absent and not required.
pub fn redis_or_skip(test: &str) -> Option<PathBuf> {
    match redis_server_path() {
        Some(p) => Some(p),
        None if std::env::var("RINGGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
            panic!("RINGGATE_REQUIRE_REDIS=1 but no redis-server on PATH (nor RINGGATE_REDIS_SERVER)")
        }
        None => {
            eprintln!("{test}: no redis-server installed (apt-get install redis-server): fleet test SKIPPED");
            None
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` child on a fixed port and data directory (so a restart
/// reads its AOF back), with its persistence arguments; killed on drop.
pub struct Redis {
    pub bin: PathBuf,
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub args: Vec<String>,
}

/// `appendonly yes`, `appendfsync always`: what FLEET.md asks of the engine.
pub fn durable_args() -> Vec<String> {
    ["--appendonly", "yes", "--appendfsync", "always"].map(String::from).to_vec()
}

impl Redis {
    /// Run as FLEET.md says ([`durable_args`]).
    pub fn start(bin: PathBuf) -> Redis {
        Self::with_args(bin, durable_args())
    }

    /// With other arguments (no AOF, `--replicaof`).
    pub fn with_args(bin: PathBuf, args: Vec<String>) -> Redis {
        let mut r = Redis { bin, child: None, port: free_port(), dir: tempfile::tempdir().unwrap(), args };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        while self.cmd(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not answer PING on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        // The AOF is loaded before PING answers +PONG (it answers -LOADING before).
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// One command over RESP; the first reply line (None when unreachable).
    pub fn cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        Some(text.lines().next().unwrap_or("").to_string())
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return String::new() };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let req = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        // A bulk string: read until its announced length is in.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&out);
            if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
                if len.parse::<usize>().is_ok_and(|l| rest.len() >= l) {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&out).to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---- nodes ---------------------------------------------------------------

/// The fleet's shared route signing key (every node must use the same).
pub fn shared_key(dir: &Path) -> PathBuf {
    let cfg = ringgate::config::RouteConfig::default();
    let key = ringgate::route::load_or_create_key(&cfg, dir).expect("route key");
    key.path.clone()
}

pub struct Fleet {
    pub _redis_keep: (),
    pub key_dir: tempfile::TempDir,
    pub nodes: Vec<Server>,
}

pub fn node_config(redis: &[String], id: &str, key: &Path, extra_fleet: &str) -> Config {
    node_config_hb(redis, id, key, 200, extra_fleet)
}

/// `node_config` with another `heartbeat_ms` (a test that must act between two gap checks).
pub fn node_config_hb(redis: &[String], id: &str, key: &Path, heartbeat_ms: u64, extra_fleet: &str) -> Config {
    let urls: Vec<String> = redis.iter().map(|u| format!("\"{u}\"")).collect();
    Config::default().tls(false).workers(2).set("route", format!("signing_key_file = \"{}\"", key.display())).extra(&format!(
        "[fleet]\nredis = [{}]\nnode_id = \"{id}\"\nadvertise_host = \"127.0.0.1\"\nheartbeat_ms = {heartbeat_ms}\nengine_timeout_ms = 700\n{extra_fleet}",
        urls.join(", ")
    ))
}

impl Fleet {
    pub fn start(redis: &Redis, n: usize) -> Fleet {
        let key_dir = tempfile::tempdir().unwrap();
        let key = shared_key(key_dir.path());
        let nodes = (1..=n).map(|i| node_config(&[redis.url()], &format!("n{i}"), &key, "").start()).collect();
        let f = Fleet { _redis_keep: (), key_dir, nodes };
        for s in &f.nodes {
            wait_ready(s, true);
        }
        f
    }
}

// ---- HTTP ----------------------------------------------------------------

pub fn parse_admin_addr(log: &str) -> Option<SocketAddr> {
    let at = log.rfind("admin_addr=")? + "admin_addr=".len();
    let rest = &log[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One HTTP/1.1 request with `Connection: close`; (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub fn admin(s: &Server) -> (SocketAddr, String) {
    let addr = parse_admin_addr(&s.stderr_tail()).unwrap_or_else(|| panic!("no admin_addr:\n{}", s.stderr_tail()));
    let token = std::fs::read_to_string(s.data_dir().join("admin-token")).expect("admin-token").trim().to_string();
    (addr, token)
}

pub fn readyz(s: &Server) -> u16 {
    let (a, _) = admin(s);
    http(a, "GET", "/readyz", None, None).0
}

pub fn wait_ready(s: &Server, ready: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = readyz(s);
        if (st == 200) == ready {
            return;
        }
        assert!(Instant::now() < deadline, "readyz stayed {st} (wanted ready={ready})\n{}", s.stderr_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn metric(s: &Server, name: &str) -> f64 {
    metric_at(admin(s).0, name)
}

/// [`metric`] from an admin address read before (a test whose node logs a
/// lot may no longer have `admin_addr=` in its log's tail).
pub fn metric_at(a: SocketAddr, name: &str) -> f64 {
    let (_, text) = http(a, "GET", "/metrics", None, None);
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

pub fn route_ids(s: &Server, query: &str) -> Vec<String> {
    let (st, body) = http(s.addr(), "GET", &format!("/v1/route{query}"), None, None);
    assert_eq!(st, 200, "{body}");
    let env: serde_json::Value = serde_json::from_str(&body).unwrap();
    let payload: serde_json::Value = serde_json::from_str(env["payload"].as_str().unwrap()).unwrap();
    payload["endpoints"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

/// Reads PUSHes (acking each) until `n` distinct seqs are in, or the wait
/// ends; returns seq → (msg_id, payload).
pub fn collect(c: &mut Client, n: usize, wait: Duration) -> BTreeMap<u64, (u64, Vec<u8>)> {
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + wait;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match c.recv_frame(left) {
            Ok(Frame::Push(p)) => {
                c.send_frame(&Frame::PushAck { seq: p.seq });
                got.insert(p.seq, (p.msg_id, p.payload.clone()));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}


/// A 3-master Redis Cluster (no replicas, slots spread by `redis-cli
/// --cluster create`), once `cluster_state:ok` on every shard.
pub fn start_cluster(bin: &Path) -> Vec<Redis> {
    let bin = bin.to_path_buf();
    let cli = bin.with_file_name("redis-cli");
    assert!(cli.exists(), "redis-cli next to redis-server (Debian: redis-tools, a dependency of redis-server)");
    // Three masters, no replicas, slots spread by redis-cli.
    let mut args = durable_args();
    // Not full coverage: a test may kill a shard, and the others keep serving their slots.
    args.extend(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-require-full-coverage", "no"].map(String::from));
    let shards: Vec<Redis> = (0..3).map(|_| Redis::with_args(bin.clone(), args.clone())).collect();
    let addrs: Vec<String> = shards.iter().map(|r| format!("127.0.0.1:{}", r.port)).collect();
    let out = Command::new(&cli).arg("--cluster").arg("create").args(&addrs).args(["--cluster-replicas", "0", "--cluster-yes"]).output().unwrap();
    assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + WAIT;
    loop {
        let ok = shards.iter().all(|r| {
            let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
            s.write_all(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n").unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).contains("cluster_state:ok")
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "cluster never reached cluster_state:ok");
        std::thread::sleep(Duration::from_millis(100));
    }
    shards
}

