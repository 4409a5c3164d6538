//! A minimal blocking client of ringgate's admin API (ADMIN contract): publish to users, read a message's delivery ledger.
//!
//! One request per connection (`Connection: close`), so a response is
//! everything until EOF; bodies are small JSON. Used by `idle-multi` to
//! deliver a message to sampled users and to check, on the server side,
//! that their devices acknowledged it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub struct Admin {
    pub addr: SocketAddr,
    token: String,
}

/// Parses ringgate's `admin API on admin_addr=IP:PORT` log line.
pub fn parse_admin_addr(line: &str) -> Option<SocketAddr> {
    let at = line.find("admin_addr=")? + "admin_addr=".len();
    line[at..].split(|c: char| c.is_whitespace() || c == '"').next()?.parse().ok()
}

impl Admin {
    /// The admin API of the server whose log and data dir are under `dir`
    /// (as the bench starts it): waits for the address in the log and the
    /// generated token file.
    pub fn of_server_dir(dir: &Path, timeout: Duration) -> Result<Admin> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let addr = log.lines().find_map(parse_admin_addr);
            let token = std::fs::read_to_string(dir.join("data").join("admin-token")).ok();
            if let (Some(addr), Some(token)) = (addr, token) {
                return Ok(Admin { addr, token: token.trim().to_string() });
            }
            if Instant::now() > deadline {
                bail!("no admin address or token for the server in {} after {timeout:?}", dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One request; returns the status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10)).with_context(|| format!("admin {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token,
            body.len()
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("admin: malformed response"))?;
        let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("admin: no status"))?;
        let len = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse::<usize>().ok()));
        let body = match len {
            Some(n) => rest.get(..n).unwrap_or(rest).to_string(),
            None => rest.to_string(),
        };
        Ok((status, body))
    }

    /// `POST /v1/messages` to `users`; returns the message id.
    pub fn publish(&self, users: &[String], payload: &str) -> Result<u64> {
        let body = serde_json::json!({ "to_users": users, "payload": payload }).to_string();
        let (status, resp) = self.request("POST", "/v1/messages", Some(&body))?;
        if status != 200 {
            bail!("admin publish: HTTP {status}: {resp}");
        }
        let v: serde_json::Value = serde_json::from_str(&resp)?;
        v["msg_id"].as_u64().ok_or_else(|| anyhow!("admin publish: no msg_id in {resp}"))
    }

    /// Devices that acknowledged `msg_id`, from its delivery ledger.
    pub fn acked_devices(&self, msg_id: u64) -> Result<u64> {
        let (status, resp) = self.request("GET", &format!("/v1/messages/{msg_id}"), None)?;
        if status != 200 {
            bail!("admin ledger of {msg_id}: HTTP {status}: {resp}");
        }
        let v: serde_json::Value = serde_json::from_str(&resp)?;
        Ok(acked_in_ledger(&v))
    }
}

/// Devices with `acked_at_ms` set in a ledger body.
pub fn acked_in_ledger(v: &serde_json::Value) -> u64 {
    let recipients = v["recipients"].as_array().map(|a| a.as_slice()).unwrap_or(&[]);
    recipients
        .iter()
        .flat_map(|r| r["devices"].as_array().map(|a| a.as_slice()).unwrap_or(&[]))
        .filter(|d| d["acked_at_ms"].as_u64().is_some())
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_line_and_ledger_parse() {
        let line = r#"2026-12-04T23:40:00Z  INFO ringgate::admin: admin API on admin_addr=127.0.0.1:40123 admin_addr=127.0.0.1:40123"#;
        assert_eq!(parse_admin_addr(line), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(parse_admin_addr("listening addr=127.0.0.1:1"), None);
        let v = serde_json::json!({"recipients": [
            {"user": "a", "devices": [{"device_id": "d", "acked_at_ms": 5}]},
            {"user": "b", "devices": [{"device_id": "d", "acked_at_ms": null}]},
            {"user": "c", "devices": []}]});
        assert_eq!(acked_in_ledger(&v), 1);
    }
}
