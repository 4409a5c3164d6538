//! `ringgate-client demo`: a chat page for a browser, served from a small
//! HTTP server of its own, that loads the browser client (`ringgate.js`,
//! embedded in this binary) and talks to the gateway directly.
//!
//! What trips a newcomer with a browser is not the code but two settings
//! the browser hides from the page: the gateway must list the page's origin
//! in `web.allowed_origins`, and the browser must trust the gateway's
//! certificate. The demo prints both, with the exact lines, before it
//! serves anything; the page shows every state change of the client,
//! including the `failed` state with its reason.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// The browser client, as shipped in `clients/js/`.
pub const RINGGATE_JS: &str = include_str!("../../clients/js/ringgate.js");

/// What the page needs to know.
pub struct Demo {
    /// The gateway's base URL as the browser reaches it, e.g. `https://localhost:7443`.
    pub gateway: String,
    /// The page user's token (embedded in the page: a development demo only).
    pub token: String,
    /// Default recipient shown in the page.
    pub to: String,
}

/// The HTML page: a log of states and messages, a form to send.
pub fn page(d: &Demo) -> String {
    // JSON inside <script>: escape '<' so no value can close the element.
    let cfg = serde_json::json!({ "gateway": d.gateway, "token": d.token, "to": d.to }).to_string().replace('<', "\\u003c");
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ringgate demo</title>
<style>body{{font:15px system-ui;margin:2em;max-width:50em}}#log{{background:#f4f4f4;padding:1em;min-height:12em;white-space:pre-wrap}}.failed{{color:#b00}}</style>
</head><body>
<h1>ringgate demo</h1>
<p id="state">starting…</p>
<form id="f"><label>to <input id="to" size="10"></label> <input id="text" size="40" autofocus> <button>send</button></form>
<pre id="log"></pre>
<script type="application/json" id="cfg">{cfg}</script>
<script type="module">
import {{ RinggateClient }} from "/ringgate.js";
const cfg = JSON.parse(document.getElementById("cfg").textContent);
const logEl = document.getElementById("log"), stateEl = document.getElementById("state");
const log = (s) => {{ logEl.textContent += s + "\n"; }};
document.getElementById("to").value = cfg.to;
const dev = (localStorage.rgDemoDevice ??= "demo-" + Math.random().toString(36).slice(2, 10));
window.demo = {{ states: [], msgs: [] }};
const client = new RinggateClient({{
  url: cfg.gateway, token: cfg.token, deviceId: dev,
  onMessage: (m) => {{
    const text = new TextDecoder().decode(m.payload);
    window.demo.msgs.push({{ seq: Number(m.seq), from: m.from, text }});
    log(`${{m.seq}}\t${{m.from}}\t${{text}}`);
  }},
  onState: (s, x) => {{
    const why = x ? (x.reason || x.transport || x.message || (x.status !== undefined ? "status " + x.status : "")) : "";
    window.demo.states.push({{ s, why: String(why) }});
    stateEl.textContent = `${{s}} ${{why}}`;
    stateEl.className = s;
    if (s !== "connecting") log(`[${{s}}] ${{why}}`);
  }},
}}).start();
window.demo.client = client;
document.getElementById("f").onsubmit = async (e) => {{
  e.preventDefault();
  const to = document.getElementById("to").value, t = document.getElementById("text");
  const text = t.value; t.value = "";
  const ack = await client.send(to, text);
  log(ack.status === 0 ? `sent to ${{to}}: ${{text}}` : `not sent (SENDACK ${{ack.status}})`);
}};
</script>
</body></html>
"#
    )
}

/// What to tell the person running the demo, before anything is served.
pub fn instructions(page_origin: &str, gateway: &str, ca: Option<&str>) -> String {
    let trust = match ca {
        Some(ca) => format!(
            "  open {gateway}/v1/route once in that browser and accept the certificate warning, or import {ca} as a trusted\n  authority (Chromium: Settings > Privacy and security > Security > Manage certificates > Authorities)"
        ),
        None => format!("  open {gateway}/v1/route once in that browser; it must load without a certificate warning"),
    };
    format!(
        "demo page: {page_origin}/\n\
         1. the gateway must allow this page's origin; put this in its configuration and restart it\n\
         \x20  (`ringgate serve --config demo.toml`):\n\n\
         [web]\n\
         allowed_origins = [\"{page_origin}\"]\n\n\
         2. the browser must trust the gateway's certificate:\n{trust}\n\
         If the page says `failed`, one of these two is missing (the gateway logs refused origins).\n"
    )
}

/// Serves the page and `ringgate.js` until the process ends.
pub fn serve(listener: TcpListener, d: &Demo) -> std::io::Result<()> {
    let page = page(d);
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        // One request per connection, answered in turn: a demo for one person.
        let _ = answer(&mut c, &page);
    }
    Ok(())
}

fn answer(c: &mut TcpStream, page: &str) -> std::io::Result<()> {
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    // Drain the head (bounded: 100 lines).
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = match path.split('?').next().unwrap_or("/") {
        "/" | "/index.html" => ("200 OK", "text/html; charset=utf-8", page),
        "/ringgate.js" => ("200 OK", "text/javascript; charset=utf-8", RINGGATE_JS),
        _ => ("404 Not Found", "text/plain", "not found\n"),
    };
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    c.flush()
}

/// The origin a browser sends for a page served on `addr`.
pub fn origin_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_embeds_config_safely() {
        let p = page(&Demo { gateway: "https://localhost:7443".into(), token: "a</script>b".into(), to: "alice".into() });
        assert!(p.contains("a\\u003c/script>b"), "{p}");
        assert!(!p.contains("a</script>b"));
        assert!(RINGGATE_JS.contains("export class RinggateClient"));
    }

    #[test]
    fn instructions_name_the_exact_line() {
        let s = instructions("http://127.0.0.1:8088", "https://localhost:7443", Some("ringgate-data/dev-cert.pem"));
        assert!(s.contains("allowed_origins = [\"http://127.0.0.1:8088\"]"), "{s}");
        assert!(s.contains("https://localhost:7443/v1/route"), "{s}");
    }
}
