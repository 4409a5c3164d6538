//! The bench's `redis-server`: started on a free port in its own
//! directory, durable as the deployment docs say (`appendonly yes`,
//! `appendfsync always`), pinned to the server CPUs and killed on drop;
//! and the few raw RESP commands the scenario sends it (`INFO`, `MEMORY
//! USAGE`, `BGREWRITEAOF`, `KEYS`).
//!
//! Separate from the scenario because it is process plumbing, not
//! measurement: the phases only ask it for a URL, a pid and INFO fields.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::targets::{free_port, Env};

/// `redis-server` on a free port in its own directory, durable as the docs
/// say; killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

/// `appendfsync` of the bench's Redis: `always` as documented, or
/// `RINGGATE_BENCH_REDIS_APPENDFSYNC` (e.g. `everysec`, to see what the
/// per-write fsync costs; the nodes then report the engine not durable).
pub fn appendfsync() -> String {
    std::env::var("RINGGATE_BENCH_REDIS_APPENDFSYNC").unwrap_or_else(|_| "always".into())
}

/// Whether each fleet run starts on a freshly rewritten AOF (the default),
/// so that Redis's automatic rewrite (due whenever the AOF doubled past
/// 64 MB: every ~100,000 messages here) does not land in a measured window
/// by chance: one rewrite in a 5 s window took its p99 from 10.6 to 71.8
/// ms (docs/fleet.md, "Latency"). Each run still records the rewrites that
/// ran in it; `RINGGATE_BENCH_REDIS_REWRITE_IN_WINDOW=1` leaves them to chance.
pub fn rewrite_before_runs() -> bool {
    std::env::var_os("RINGGATE_BENCH_REDIS_REWRITE_IN_WINDOW").is_none_or(|v| v != "1")
}

pub fn redis_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RINGGATE_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join("redis-server")).find(|p| p.exists())
}

impl Redis {
    pub fn start(env: &Env) -> Result<Redis> {
        let bin = redis_server_bin().ok_or_else(|| anyhow!("no redis-server on PATH (apt-get install redis-server)"))?;
        let dir = env.dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("redis.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", &appendfsync(), "--dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null());
        crate::fleet::pin_command(&mut cmd, env.server_cpus.clone());
        let child = cmd.spawn().context("starting redis-server")?;
        let r = Redis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cmd(&["PING"]).ok().as_deref() != Some("+PONG\r\n") {
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One command; the raw reply (read until it stops growing for a moment).
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if resp_complete(&out) {
                        break;
                    }
                }
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `BGREWRITEAOF`, then waits (at most 30 s) until no rewrite runs or is scheduled.
    pub fn rewrite_aof_now(&self) -> Result<()> {
        self.cmd(&["BGREWRITEAOF"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let t = self.cmd(&["INFO", "persistence"])?;
            if info_field(&t, "aof_rewrite_in_progress") == Some(0.0) && info_field(&t, "aof_rewrite_scheduled") == Some(0.0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the engine's AOF rewrite did not finish in 30 s");
            }
        }
    }

    /// A numeric field of `INFO section`.
    pub fn info(&self, section: &str, key: &str) -> Result<f64> {
        let text = self.cmd(&["INFO", section])?;
        info_field(&text, key).ok_or_else(|| anyhow!("INFO {section}: no {key}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a buffer holds one whole RESP2 reply (simple, error, integer or bulk string).
fn resp_complete(b: &[u8]) -> bool {
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return false };
    match b[0] {
        // Arrays (KEYS): read until the reply stops (the read timeout).
        b'*' => false,
        b'$' => {
            let n: i64 = std::str::from_utf8(&b[1..eol]).ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
            n < 0 || b.len() >= eol + 2 + n as usize + 2
        }
        _ => true,
    }
}

/// `key:value` from an `INFO` reply.
pub fn info_field(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_resp_framing() {
        let info = "# Memory\r\nused_memory:1234567\r\nused_memory_human:1.18M\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1_234_567.0));
        assert_eq!(info_field(info, "used_memory_rss"), None);
        assert!(resp_complete(b"+PONG\r\n"));
        assert!(!resp_complete(b"$10\r\nabc"));
        assert!(resp_complete(b"$3\r\nabc\r\n"));
        assert!(resp_complete(b"$-1\r\n"));
    }
}
