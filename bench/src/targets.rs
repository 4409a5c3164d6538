//! The servers under test: ringgate (io_uring and epoll drivers), nginx and Mosquitto, each started on loopback with a generated config and certificate.
//!
//! Every server gets the same ECDSA P-256 certificate (generated here with
//! rcgen), listens on a free loopback port, and runs pinned to the server
//! CPUs while the load generator runs on the others. One worker per server
//! core for every server (ringgate `workers`, nginx `worker_processes`;
//! Mosquitto is single-threaded), so the comparison is core for core.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::clientnet::Kx;
use crate::fleet::pin_command;
use crate::procfs::{self, ProcsSample};
use crate::worker::{Proto, TargetSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// ringgate on monoio's io_uring driver.
    RinggateUring,
    /// ringgate on monoio's legacy epoll driver (`--driver legacy`).
    RinggateEpoll,
    Nginx,
    Mosquitto,
    /// ringgate on io_uring, clients over WebSocket (`/v1/ws` over TLS).
    RinggateWsUring,
    /// ringgate on epoll, clients over WebSocket.
    RinggateWsEpoll,
    /// Node.js with the `ws` package relaying ringgate frames over WebSocket
    /// (`bench/peers/ws-relay.cjs`): the WebSocket server a user might pick instead.
    NodeWs,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::RinggateUring => "ringgate-uring",
            TargetKind::RinggateEpoll => "ringgate-epoll",
            TargetKind::Nginx => "nginx",
            TargetKind::Mosquitto => "mosquitto",
            TargetKind::RinggateWsUring => "ringgate-ws-uring",
            TargetKind::RinggateWsEpoll => "ringgate-ws-epoll",
            TargetKind::NodeWs => "node-ws",
        }
    }

    pub fn proto(self) -> Proto {
        match self {
            TargetKind::RinggateUring | TargetKind::RinggateEpoll => Proto::Ringgate,
            TargetKind::Nginx => Proto::Http,
            TargetKind::Mosquitto => Proto::Mqtt,
            // The relay speaks the scenarios' subset of ringgate's frames.
            TargetKind::RinggateWsUring | TargetKind::RinggateWsEpoll | TargetKind::NodeWs => Proto::Ringgate,
        }
    }

    /// A ringgate server (any driver, any transport), not a peer.
    pub fn is_ringgate(self) -> bool {
        matches!(
            self,
            TargetKind::RinggateUring | TargetKind::RinggateEpoll | TargetKind::RinggateWsUring | TargetKind::RinggateWsEpoll
        )
    }

    /// Clients speak over WebSocket.
    pub fn ws(self) -> bool {
        matches!(self, TargetKind::RinggateWsUring | TargetKind::RinggateWsEpoll | TargetKind::NodeWs)
    }

    /// ringgate's monoio driver for a ringgate target.
    fn driver(self) -> &'static str {
        match self {
            TargetKind::RinggateUring | TargetKind::RinggateWsUring => "uring",
            _ => "legacy",
        }
    }
}

/// Everything the servers of one run share.
#[derive(Clone, Debug)]
pub struct Env {
    pub dir: PathBuf,
    pub ringgate_bin: PathBuf,
    pub server_cpus: Vec<usize>,
    pub client_cpus: Vec<usize>,
    /// Server worker threads/processes (one per server core).
    pub workers: usize,
    pub jwt_secret: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tls: bool,
    pub src_addrs: u32,
    pub kx: Kx,
    /// `perf record` the server into this file while it runs.
    pub perf_record: Option<PathBuf>,
}

/// Splits the machine: the first half of the cores serve, the rest load
/// (2 cores: server on 0, client on 1). One core: both share it.
pub fn split_cpus(n: usize) -> (Vec<usize>, Vec<usize>) {
    if n <= 1 {
        return (vec![0], vec![0]);
    }
    let s = n / 2;
    ((0..s).collect(), (s..n).collect())
}

/// Writes a self-signed ECDSA P-256 certificate for localhost/127.0.0.1.
pub fn write_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert = params.self_signed(&key)?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

/// A free loopback port (bound then released; the server binds it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Random hex for the JWT secret.
pub fn random_secret() -> String {
    let mut b = [0u8; 24];
    // SAFETY: getrandom fills the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
    if n != b.len() as isize {
        // Falls back to time-derived bytes: only a benchmark secret on loopback.
        let t = crate::stats::mono_ns().to_le_bytes();
        b[..8].copy_from_slice(&t);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The ringgate config the bench writes. `[server] pin_workers` is off
/// because the process is started pinned to the server CPUs instead.
/// `RINGGATE_BENCH_EXTRA_TOML` is appended (new sections only, e.g.
/// `[admin]\nledger_retention_s = 0`), to compare settings in one run.
pub fn ringgate_config(env: &Env, port: u16, driver: &str, data_dir: &Path) -> String {
    format!(
        r#"# written by ringgate-bench
[server]
listen = "127.0.0.1:{port}"
# Any free port: the default 7080 may be taken on a shared machine.
admin_listen = "127.0.0.1:0"
workers = {workers}
driver = "{driver}"
pin_workers = false
backlog = 4096
shutdown_grace_ms = 1000

[tls]
enabled = {tls}
cert_file = "{cert}"
key_file = "{key}"

[auth]
jwt_secret = "{secret}"

[session]
# Idle connections must outlive the measurement without sending PINGs.
heartbeat_s = 3600

[store]
data_dir = "{data}"
durability = "memory"

[limits]
# The load generator opens thousands of connections from a few loopback
# addresses at full speed and pipelines SENDs: per-address and per-connection
# abuse limits would measure themselves, not the server.
max_preauth_per_ip = 1000000
connect_rate_per_ip = 1000000
connect_rate = 1000000
send_rate_per_connection = 1000000
max_sends_in_flight = 100000
"#,
        workers = env.workers,
        tls = env.tls,
        cert = env.cert.display(),
        key = env.key.display(),
        secret = env.jwt_secret,
        data = data_dir.display(),
    ) + &std::env::var("RINGGATE_BENCH_EXTRA_TOML").unwrap_or_default()
}

pub fn nginx_config(env: &Env, port: u16, prefix: &Path) -> String {
    format!(
        r#"# written by ringgate-bench
user root;
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 19500;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_timeout 3600s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;
        location / {{
            return 200 "ok\n";
        }}
    }}
}}
"#,
        workers = env.workers,
        prefix = prefix.display(),
        cert = env.cert.display(),
        key = env.key.display(),
    )
}

pub fn mosquitto_config(env: &Env, port: u16) -> String {
    format!(
        r#"# written by ringgate-bench
user root
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
set_tcp_nodelay true
# ringgate's inflight window is 64 PUSHes per connection; match it.
max_inflight_messages 64
# Do not drop QoS 1 messages for a subscriber that falls behind.
max_queued_messages 1000000
max_queued_bytes 0
max_connections -1
listener {port} 127.0.0.1
certfile {cert}
keyfile {key}
tls_version tlsv1.3
"#,
        cert = env.cert.display(),
        key = env.key.display(),
    )
}

/// Where Debian (`node-ws`) and npm put global modules: the relay's `require("ws")` looks there.
pub const NODE_PATH: &str = "/usr/share/nodejs:/usr/lib/node_modules:/usr/local/lib/node_modules";

/// The Node WebSocket relay peer.
pub fn ws_relay_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/ws-relay.cjs")
}

/// The `ws` package's version, or `None` when Node cannot load it.
pub fn ws_module_version() -> Option<String> {
    let o = Command::new("node")
        .args(["-e", "process.stdout.write(require('ws/package.json').version)"])
        .env("NODE_PATH", NODE_PATH)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A running server under test.
pub struct Server {
    pub kind: TargetKind,
    pub addr: SocketAddr,
    pub config: String,
    pub version: String,
    child: Child,
    perf: Option<Child>,
    /// Where its config, log and data live.
    pub dir: PathBuf,
}

fn wait_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listening on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn command_version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&s).lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Parses ringgate's `listening addr=IP:PORT` log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let at = line.find("listening addr=")? + "listening addr=".len();
    line[at..].split_whitespace().next()?.trim_end_matches(',').parse().ok()
}

/// The ringgate config of one of several processes sharing `port` with
/// SO_REUSEPORT (`server.allow_shared_port`): each has its own data dir and
/// admin port. For the multi-process idle memory run only — the kernel
/// splits connections between processes that do not know each other, so
/// messages would not route between them.
pub fn ringgate_config_shared(env: &Env, port: u16, driver: &str, data_dir: &Path) -> String {
    ringgate_config(env, port, driver, data_dir).replacen("[server]\n", "[server]\nallow_shared_port = true\n", 1)
}

impl Server {
    pub fn start(env: &Env, kind: TargetKind) -> Result<Server> {
        Self::start_in(env, kind, free_port()?, &env.dir.join(kind.name()), false, &|c| c)
    }

    /// A ringgate target in `env.dir/<name>` with `edit` applied to the
    /// bench's config (the `fleet` scenario: nodes with a `[fleet]`
    /// section, a single node on the durable log).
    pub fn start_edited(env: &Env, kind: TargetKind, name: &str, edit: &dyn Fn(String) -> String) -> Result<Server> {
        if !kind.is_ringgate() {
            bail!("{}: only ringgate configs are edited", kind.name());
        }
        Self::start_in(env, kind, free_port()?, &env.dir.join(name), false, edit)
    }

    /// Server `index` of several independent ringgate processes, each on its own port
    /// (runs whose clients must come back to the server that holds their inbox).
    pub fn start_nth(env: &Env, kind: TargetKind, index: usize) -> Result<Server> {
        if index == 0 {
            return Self::start(env, kind);
        }
        Self::start_in(env, kind, free_port()?, &env.dir.join(format!("{}-{index}", kind.name())), false, &|c| c)
    }

    /// Server `index` of several ringgate processes sharing one `port`.
    pub fn start_shared(env: &Env, kind: TargetKind, port: u16, index: usize) -> Result<Server> {
        if !kind.is_ringgate() {
            bail!("{}: only ringgate runs as several processes on one port here", kind.name());
        }
        Self::start_in(env, kind, port, &env.dir.join(format!("{}-{index}", kind.name())), true, &|c| c)
    }

    fn start_in(env: &Env, kind: TargetKind, port: u16, dir: &Path, shared: bool, edit: &dyn Fn(String) -> String) -> Result<Server> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        match kind {
            TargetKind::RinggateUring | TargetKind::RinggateEpoll | TargetKind::RinggateWsUring | TargetKind::RinggateWsEpoll => {
                let driver = kind.driver();
                let config = edit(if shared {
                    ringgate_config_shared(env, port, driver, &dir.join("data"))
                } else {
                    ringgate_config(env, port, driver, &dir.join("data"))
                });
                let path = dir.join("ringgate.toml");
                std::fs::write(&path, &config)?;
                let mut cmd = Command::new(&env.ringgate_bin);
                cmd.arg("serve").arg("--config").arg(&path).arg("--driver").arg(driver);
                // RINGGATE_BENCH_SERVER_LOG: the servers' RUST_LOG (with
                // RINGGATE_BENCH_KEEP, to read why connections closed).
                let level = std::env::var("RINGGATE_BENCH_SERVER_LOG").unwrap_or_else(|_| "info".into());
                cmd.env("RUST_LOG", level).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
                pin_command(&mut cmd, env.server_cpus.clone());
                let mut child = cmd.spawn().with_context(|| format!("starting {}", env.ringgate_bin.display()))?;
                let stderr = child.stderr.take().ok_or_else(|| anyhow!("ringgate stderr"))?;
                let (tx, rx) = mpsc::channel();
                // Copy the log to a file and report the listening address once seen.
                std::thread::spawn(move || {
                    let mut log = log;
                    let mut tx = Some(tx);
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let _ = writeln!(log, "{line}");
                        if let Some(a) = parse_listening(&line) {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(a);
                            }
                        }
                    }
                });
                let addr = match rx.recv_timeout(Duration::from_secs(20)) {
                    Ok(a) => a,
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                        bail!("ringgate did not print `listening addr=` within 20 s; its log:\n{log}");
                    }
                };
                let version = command_version(&env.ringgate_bin.to_string_lossy(), &["--version"]);
                let mut s = Server { kind, addr, config, version, child, perf: None, dir: dir.clone() };
                s.start_perf(env)?;
                Ok(s)
            }
            TargetKind::Nginx => {
                let config = nginx_config(env, port, &dir);
                let path = dir.join("nginx.conf");
                std::fs::write(&path, &config)?;
                let mut cmd = Command::new("nginx");
                cmd.arg("-p").arg(&dir).arg("-c").arg(&path).arg("-e").arg(dir.join("error.log"));
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
                pin_command(&mut cmd, env.server_cpus.clone());
                let child = cmd.spawn().context("starting nginx (run bench/setup-peers.sh)")?;
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                let mut s = Server { kind, addr, config, version: command_version("nginx", &["-v"]), child, perf: None, dir: dir.clone() };
                if let Err(e) = wait_port(addr, Duration::from_secs(10)) {
                    s.kill();
                    return Err(e);
                }
                // Workers fork after the listener opens; wait for them so they are measured.
                let deadline = Instant::now() + Duration::from_secs(5);
                while procfs::children_of(s.child.id()).len() < env.workers && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                s.start_perf(env)?;
                Ok(s)
            }
            TargetKind::NodeWs => {
                let script = ws_relay_script();
                let mut cmd = Command::new("node");
                cmd.arg(&script).arg(port.to_string()).arg(&env.cert).arg(&env.key).arg(&env.jwt_secret);
                cmd.env("NODE_PATH", NODE_PATH).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
                pin_command(&mut cmd, env.server_cpus.clone());
                let child = cmd.spawn().context("starting node (run bench/setup-peers.sh)")?;
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                let version = format!("node {} + ws {}", command_version("node", &["--version"]), ws_module_version().unwrap_or_default());
                let config = format!("node {} {port} <cert> <key> <secret>\n", script.display());
                let mut s = Server { kind, addr, config, version, child, perf: None, dir: dir.clone() };
                if let Err(e) = wait_port(addr, Duration::from_secs(10)) {
                    s.kill();
                    return Err(e);
                }
                s.start_perf(env)?;
                Ok(s)
            }
            TargetKind::Mosquitto => {
                let config = mosquitto_config(env, port);
                let path = dir.join("mosquitto.conf");
                std::fs::write(&path, &config)?;
                let mut cmd = Command::new("mosquitto");
                cmd.arg("-c").arg(&path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
                pin_command(&mut cmd, env.server_cpus.clone());
                let child = cmd.spawn().context("starting mosquitto (run bench/setup-peers.sh)")?;
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                let mut s = Server { kind, addr, config, version: command_version("mosquitto", &["-h"]), child, perf: None, dir: dir.clone() };
                if let Err(e) = wait_port(addr, Duration::from_secs(10)) {
                    s.kill();
                    return Err(e);
                }
                s.start_perf(env)?;
                Ok(s)
            }
        }
    }

    /// `perf record -e cpu-clock -g` on every thread of the server (hardware
    /// counters are not available in this VM; cpu-clock is a timer sample).
    fn start_perf(&mut self, env: &Env) -> Result<()> {
        let Some(out) = &env.perf_record else { return Ok(()) };
        let pids: Vec<String> = self.pids().iter().map(|p| p.to_string()).collect();
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "997", "-g", "-p", &pids.join(","), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting perf record (apt-get install linux-perf)")?;
        self.perf = Some(child);
        // perf needs a moment to attach before the load starts.
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    fn stop_perf(&mut self) {
        if let Some(mut p) = self.perf.take() {
            // SAFETY: signalling our own child by pid; SIGINT makes perf write its file.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            let _ = p.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's processes: the main one and its children (nginx workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.child.id()];
        v.extend(procfs::children_of(self.child.id()));
        v
    }

    pub fn sample(&self) -> ProcsSample {
        procfs::sample_procs(&self.pids())
    }

    pub fn target_spec(&self, env: &Env) -> TargetSpec {
        TargetSpec {
            addr: self.addr,
            proto: self.kind.proto(),
            tls: env.tls || !self.kind.is_ringgate(),
            ws: self.kind.ws(),
            jwt_secret: env.jwt_secret.clone(),
            src_addrs: env.src_addrs,
            kx: env.kx,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        self.stop_perf();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_perf();
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            dir: "/tmp/x".into(),
            ringgate_bin: "ringgate".into(),
            server_cpus: vec![0],
            client_cpus: vec![1],
            workers: 1,
            jwt_secret: "0123456789abcdef0123".into(),
            cert: "/tmp/x/cert.pem".into(),
            key: "/tmp/x/key.pem".into(),
            tls: true,
            src_addrs: 16,
            kx: Kx::X25519,
            perf_record: None,
        }
    }

    #[test]
    fn listening_line_from_ringgate_log() {
        let l = "2026-11-23T06:33:01.123Z  INFO ringgate::runtime: listening addr=127.0.0.1:40123 tls=true workers=1 driver=uring";
        assert_eq!(parse_listening(l), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(parse_listening("starting"), None);
    }

    #[test]
    fn ringgate_config_is_valid_for_the_server() {
        let e = env();
        let text = ringgate_config(&e, 7443, "legacy", Path::new("/tmp/x/data"));
        let cfg = ringgate::config::Config::from_toml_str(&text).expect("parses with the server's own parser");
        cfg.validate().expect("validates");
        assert_eq!(cfg.server.listen, "127.0.0.1:7443");
        assert_eq!(cfg.server.workers, 1);
        assert_eq!(cfg.auth.jwt_secret.as_deref(), Some("0123456789abcdef0123"));
        assert!(!cfg.server.pin_workers);
    }

    #[test]
    fn peer_configs_carry_port_cert_and_limits() {
        let e = env();
        let n = nginx_config(&e, 9000, Path::new("/tmp/x/nginx"));
        assert!(n.contains("listen 127.0.0.1:9000 ssl"));
        assert!(n.contains("worker_rlimit_nofile 20000;"));
        assert!(n.contains("ssl_protocols TLSv1.3;"));
        assert_eq!(n.matches('{').count(), n.matches('}').count());
        let m = mosquitto_config(&e, 9001);
        assert!(m.contains("listener 9001 127.0.0.1"));
        assert!(m.contains("user root"));
        assert!(m.contains("certfile /tmp/x/cert.pem"));
    }

    #[test]
    fn cpu_split() {
        assert_eq!(split_cpus(1), (vec![0], vec![0]));
        assert_eq!(split_cpus(2), (vec![0], vec![1]));
        assert_eq!(split_cpus(8), (vec![0, 1, 2, 3], vec![4, 5, 6, 7]));
    }

    #[test]
    fn generated_cert_is_ecdsa_p256_pem() {
        let d = std::env::temp_dir().join(format!("rgb-cert-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (c, k) = write_cert(&d).unwrap();
        assert!(std::fs::read_to_string(c).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(std::fs::read_to_string(k).unwrap().contains("PRIVATE KEY"));
        std::fs::remove_dir_all(d).unwrap();
        assert_eq!(random_secret().len(), 48);
    }
}
