//! Phase 3, engine memory: `INFO memory` `used_memory` deltas while users
//! are created and filled through ringgate (admin publish, so no sender's
//! dedup record is in the per-message figure), and `MEMORY USAGE` of one
//! bench sender's dedup keys. `ringgate plan --fleet` reads these figures
//! from the committed result.
//!
//! Separate from the push and kill phases: it drives a node's admin API
//! and reads Redis directly instead of timing client traffic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::{EngineMemory, FleetOpts, Net, Redis};
use crate::stats::mono_ns;
use crate::targets::Server;

fn parse_admin_addr(log: &str) -> Option<SocketAddr> {
    let at = log.rfind("admin_addr=")? + "admin_addr=".len();
    let rest = &log[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `POST /v1/messages` on a node's admin API; the status.
fn admin_publish(addr: SocketAddr, token: &str, body: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    Ok(text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
}

/// Waits for the engine's memory to stop moving (lazy frees, the AOF buffer) and reads it.
fn settled_used_memory(redis: &Redis) -> Result<f64> {
    std::thread::sleep(Duration::from_millis(300));
    redis.info("memory", "used_memory")
}

pub(super) fn memory_phase(net: &Net, o: &FleetOpts, node: &Server, redis: &Redis, dedup_user: &str) -> Result<EngineMemory> {
    let log = std::fs::read_to_string(node.dir.join("server.log")).unwrap_or_default();
    let admin = parse_admin_addr(&log).ok_or_else(|| anyhow!("no admin_addr in the node's log"))?;
    let token = std::fs::read_to_string(node.dir.join("data/admin-token")).context("admin-token")?.trim().to_string();
    let prefix = format!("m{}_", mono_ns() % 1_000_000);
    let users: Vec<String> = (0..o.mem_users).map(|i| format!("{prefix}{i}")).collect();
    let m0 = settled_used_memory(redis)?;
    // 1: every user connects once (presence: one device known), then leaves.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        for chunk in users.chunks(64) {
            let mut conns = Vec::new();
            for u in chunk {
                conns.push(net.login(node.addr, u, 0).await.with_context(|| format!("login {u}"))?);
            }
            drop(conns);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(rt);
    let m1 = settled_used_memory(redis)?;
    let body = |chunk: &[String], k: u64| {
        let list: Vec<String> = chunk.iter().map(|u| format!("\"{u}\"")).collect();
        format!("{{\"to_users\":[{}],\"payload\":\"{}{}\"}}", list.join(","), k, ".".repeat(o.payload_bytes.saturating_sub(8)))
    };
    let publish = |k: u64| -> Result<()> {
        for chunk in users.chunks(100) {
            let st = admin_publish(admin, &token, &body(chunk, k))?;
            if st != 200 {
                bail!("admin publish answered {st}");
            }
        }
        Ok(())
    };
    // 2: each user's first message (creates the inbox's keys).
    publish(0)?;
    let m2 = settled_used_memory(redis)?;
    // 3: the rest.
    for k in 1..o.mem_messages.max(2) {
        publish(k)?;
    }
    let m3 = settled_used_memory(redis)?;
    let u = o.mem_users as f64;
    let further = (o.mem_messages.max(2) - 1) as f64 * u;
    let per_msg = (m3 - m2) / further;
    let inbox = (m2 - m1) / u - per_msg;
    // The device `d`'s records (16 buckets, `src/fleet/scripts.rs`
    // `dedup_key`) and its id queue.
    let dedup = (0..16)
        .map(|b| format!("rg:{{{dedup_user}}}:d:d:{b}"))
        .chain([format!("rg:{{{dedup_user}}}:q:d")])
        .filter_map(|k| redis.cmd(&["MEMORY", "USAGE", &k]).ok())
        .filter_map(|r| r.strip_prefix(':').and_then(|v| v.trim().parse::<f64>().ok()))
        .sum();
    Ok(EngineMemory {
        users: o.mem_users,
        messages_per_user: o.mem_messages.max(2),
        payload_bytes: o.payload_bytes as u64,
        bytes_per_known_user: (m1 - m0) / u,
        bytes_per_inbox: inbox,
        bytes_per_message: per_msg,
        bytes_per_offline_user: (m1 - m0) / u + inbox,
        dedup_bytes_per_sending_device: dedup,
    })
}
