//! `clients/js/ringgate.js` in a real browser: headless Chromium, driven over
//! the DevTools protocol, opens a test page that imports the module and talks
//! to a real ringgate, with a native TLS client as the peer.
//!
//! Setup, and why:
//! - ringgate listens with TLS and its dev certificate, the deployed shape;
//!   Chromium accepts the certificate with `--ignore-certificate-errors`
//!   (the test is about the transports, not the PKI).
//! - The page is served by a tiny HTTP server inside this test (ringgate
//!   serves no pages) at `http://127.0.0.1:P`; that origin is listed in
//!   `web.allowed_origins`, so every request of the page to
//!   `https://localhost:Q` is cross-origin and exercises CORS (the
//!   preflight of the POSTs included). The same page at `http://localhost:P`
//!   is a foreign origin and must be refused.
//! - Chromium runs `--headless=new --no-sandbox` (CI runs as root) in its
//!   own process group with a temporary profile, and is killed as a group
//!   on drop, so a failing test leaves no browser behind.
//!
//! One run per transport: WebSocket, SSE + POST (WebSocket forced off), and
//! long-poll (both off): messages both ways, cumulative ack (a short
//! `ack_timeout` turns a missing PUSHACK into a retransmission the page
//! would count as a duplicate, then a DISCONNECT 4), and replay after a
//! page reload from the `last_seq` kept in localStorage.
//!
//! Skipped with a message when no Chromium is installed, unless
//! `RINGGATE_REQUIRE_CHROMIUM=1` (set by `.ci/run` once it has installed it).

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Serves the test page, the harness and `ringgate.js` over plain HTTP on
/// 127.0.0.1 (one request per connection). Runs until the process exits.
fn serve_pages() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let js_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let js_dir = js_dir.clone();
            std::thread::spawn(move || serve_one(conn, &js_dir));
        }
    });
    port
}

fn serve_one(mut conn: TcpStream, js_dir: &Path) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_string();
    let (status, ctype, body): (&str, &str, Vec<u8>) = match path.as_str() {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE.as_bytes().to_vec()),
        "/ringgate.js" => ("200 OK", "text/javascript", std::fs::read(js_dir.join("ringgate.js")).unwrap()),
        "/harness.js" => ("200 OK", "text/javascript", std::fs::read(js_dir.join("test/browser_harness.js")).unwrap()),
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(&body);
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>ringgate.js test</title>
<script type="module">import { h } from "/harness.js"; window.harnessReady = true;</script>
"#;

/// A headless Chromium and one page target, driven over the DevTools
/// protocol (flattened session on the browser's WebSocket).
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tungstenite::WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    /// Browser stderr and the page's console, for failure messages.
    log: Arc<Mutex<VecDeque<String>>>,
    /// DevTools events seen (method, params), for the assertions that need them.
    events: Vec<(String, Value)>,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The launcher script and every browser process share the group.
        // SAFETY: kill(2) on the process group we created; no memory involved.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromium {
    fn launch(bin: &Path) -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--ignore-certificate-errors",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let thread_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut l = thread_log.lock().unwrap();
                l.push_back(format!("chromium: {line}"));
                if l.len() > 200 {
                    l.pop_front();
                }
            }
        });
        let mut guard = Chromium { child, _profile: profile, ws: placeholder_ws(), session: String::new(), next_id: 0, log, events: Vec::new() };
        let url = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("chromium did not start:\n{}", guard.log_tail()));
        let hostport = url.strip_prefix("ws://").and_then(|r| r.split('/').next()).unwrap().to_string();
        let sock = TcpStream::connect(&hostport).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), sock).unwrap();
        guard.ws = ws;
        let target = guard.call("Target.createTarget", json!({"url": "about:blank"}), false);
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = guard.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}), false);
        guard.session = attached["sessionId"].as_str().unwrap().to_string();
        guard.call("Runtime.enable", json!({}), true);
        guard.call("Network.enable", json!({}), true);
        guard
    }

    fn log_tail(&self) -> String {
        self.log.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// One DevTools command; its `result` (panics on a protocol error).
    fn call(&mut self, method: &str, params: Value, on_page: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if on_page {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(tungstenite::Message::Text(msg.to_string())).unwrap();
        loop {
            let m = match self.ws.read() {
                Ok(m) => m,
                Err(e) => panic!("DevTools read during {method}: {e}\n{}", self.log_tail()),
            };
            let tungstenite::Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("DevTools {method}: {err}\n{}", self.log_tail());
                }
                return v["result"].clone();
            }
            if let Some(ev) = v["method"].as_str() {
                if ev == "Runtime.consoleAPICalled" {
                    let args: Vec<String> = v["params"]["args"]
                        .as_array()
                        .map(|a| a.iter().map(|x| x["value"].to_string()).collect())
                        .unwrap_or_default();
                    self.log.lock().unwrap().push_back(format!("console: {}", args.join(" ")));
                } else if ev == "Runtime.exceptionThrown" {
                    self.log.lock().unwrap().push_back(format!("exception: {}", v["params"]["exceptionDetails"]));
                }
                self.events.push((ev.to_string(), v["params"].clone()));
            }
        }
    }

    /// Evaluates `expr` in the page, awaiting a promise; its JSON value, or
    /// the exception's description.
    fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "awaitPromise": true, "returnByValue": true}), true);
        if let Some(ex) = r.get("exceptionDetails") {
            let d = ex["exception"]["description"].as_str().map(str::to_string).unwrap_or_else(|| ex.to_string());
            return Err(d);
        }
        Ok(r["result"]["value"].clone())
    }

    /// `eval` that must succeed.
    fn js(&mut self, expr: &str) -> Value {
        match self.eval(expr) {
            Ok(v) => v,
            Err(e) => panic!("page threw on {expr}:\n{e}\n--- browser log ---\n{}", self.log_tail()),
        }
    }

    /// Opens `url` and waits until the harness module has loaded.
    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}), true);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Right after navigating the old document may still answer, or
            // its context may vanish mid-call: both just mean "not yet".
            if let Ok(Value::Bool(true)) = self.eval("window.harnessReady === true") {
                return;
            }
            assert!(Instant::now() < deadline, "page {url} did not load the harness\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A throwaway value for the field until the real socket exists.
fn placeholder_ws() -> tungstenite::WebSocket<TcpStream> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    tungstenite::WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None)
}

/// A TLS ringgate whose `web.allowed_origins` lists the page's origin.
fn start_server(page_port: u16) -> Server {
    Config::default()
        .set("web", format!("allowed_origins = [\"http://127.0.0.1:{page_port}\"]"))
        // A PUSHACK missing for 1.5 s shows as a retransmission (a duplicate
        // in the page), and after one retry as DISCONNECT 4. Not shorter: a
        // busy machine may stall the page for a good part of a second.
        .ack_timeout_ms(1500)
        .max_retries(1)
        .start()
}

/// Messages both ways, ack and replay through one forced transport list.
fn exchange(test: &str, transports: &[&str], expect: &str) {
    let Some(bin) = chromium_or_skip(test) else { return };
    let started = Instant::now();
    let page_port = serve_pages();
    let server = start_server(page_port);
    let gate = format!("https://localhost:{}", server.addr().port());
    let (mut bob, _) = server.login("bob", "phone", 0);
    bob.send_ok(1, "alice", b"offline-1");

    let mut browser = Chromium::launch(&bin);
    let page = format!("http://127.0.0.1:{page_port}/");
    browser.open(&page);
    let opts = json!({"url": gate, "token": token("alice"), "deviceId": "browser-1", "transports": transports}).to_string();
    assert_eq!(browser.js(&format!("h.start({opts})")), json!("0"), "fresh profile: nothing stored");

    // Up over the expected transport; the replay of what came while offline.
    let s = browser.js("h.until(() => h.msgs.length >= 1, 'the replayed message')");
    assert_eq!(s["transport"], json!(expect), "{s}");
    assert_eq!(s["msgs"][0], json!({"seq": 1, "from": "bob", "text": "offline-1", "redelivery": true}), "{s}");

    // Live, native → browser.
    bob.send_ok(2, "alice", b"live-2");
    let s = browser.js("h.until(() => h.msgs.length >= 2, 'the live message')");
    assert_eq!(s["msgs"][1], json!({"seq": 2, "from": "bob", "text": "live-2", "redelivery": false}), "{s}");

    // Browser → native: SENDACK 0 in the page, the PUSH at bob.
    let ack = browser.js("h.send('bob', 'from the browser')");
    assert_eq!(ack["status"], json!(0), "{ack}");
    let p = bob.expect_push();
    assert_eq!((p.from.as_str(), p.payload.as_slice()), ("alice", b"from the browser".as_slice()));
    bob.ack(p.seq);

    // Acked: past the ack timeout nothing was retransmitted (no duplicate)
    // and the link never dropped (no DISCONNECT 4), and the cursor is kept.
    std::thread::sleep(Duration::from_millis(2600));
    let s = browser.js("h.summary()");
    assert_eq!(s["stats"]["duplicates"], json!(0), "a PUSH was retransmitted: the PUSHACK did not arrive\n{s}");
    assert_eq!(s["states"].as_array().unwrap().iter().filter(|x| x["s"] == "up").count(), 1, "{s}");
    assert!(!s["states"].as_array().unwrap().iter().any(|x| x["s"] == "down"), "a link failed or dropped: {s}");
    assert_eq!((s["lastSeq"].clone(), s["stored"].clone()), (json!("2"), json!("2")), "{s}");

    // Replay: close, a message while away, then a reloaded page resumes
    // from the stored last_seq and gets only what it has not seen.
    browser.js("h.client.close(), true");
    bob.send_ok(3, "alice", b"offline-3");
    browser.open(&page);
    assert_eq!(browser.js(&format!("h.start({opts})")), json!("2"), "last_seq from localStorage");
    let s = browser.js("h.until(() => h.msgs.length >= 1, 'the replay after reload')");
    assert_eq!(s["transport"], json!(expect), "{s}");
    assert_eq!(s["msgs"][0], json!({"seq": 3, "from": "bob", "text": "offline-3", "redelivery": true}), "{s}");
    bob.send_ok(4, "alice", b"live-4");
    let s = browser.js("h.until(() => h.msgs.length >= 2, 'live after reload')");
    assert_eq!(s["msgs"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["msgs"][1]["seq"], json!(4), "{s}");
    let ack = browser.js("h.send('bob', 'again')");
    assert_eq!(ack["status"], json!(0), "{ack}");
    bob.expect_push_seq(p.seq + 1, b"again");
    browser.js("h.client.close(), true");
    drop(browser);
    server.assert_no_panic();
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn browser_websocket() {
    exchange("browser_websocket", &["ws"], "ws");
}

#[test]
fn browser_sse_post() {
    exchange("browser_sse_post", &["sse", "lp"], "sse");
}

#[test]
fn browser_long_poll() {
    exchange("browser_long_poll", &["lp"], "lp");
}

/// The same page from a foreign origin (`http://localhost:P`, not listed)
/// is refused on every transport and cannot read the route endpoint; from
/// the listed origin (`http://127.0.0.1:P`) both work.
#[test]
fn browser_origin_policy() {
    let Some(bin) = chromium_or_skip("browser_origin_policy") else { return };
    let page_port = serve_pages();
    let server = start_server(page_port);
    let gate = format!("https://localhost:{}", server.addr().port());
    let mut browser = Chromium::launch(&bin);
    let route = format!("fetch('{gate}/v1/route').then(r => r.status, e => 'refused: ' + e.message)");

    browser.open(&format!("http://localhost:{page_port}/"));
    let opts = json!({"url": gate, "token": token("alice"), "deviceId": "foreign", "transports": ["ws", "sse", "lp"]});
    browser.js(&format!("h.start({opts}), true"));
    // Every transport tried and failed at least once, never up.
    let s = browser.js(
        "h.until(() => ['ws', 'sse', 'lp'].every(t => h.states.some(x => x.s === 'down' && x.transport === t)), 'every transport refused')",
    );
    assert!(!s["states"].as_array().unwrap().iter().any(|x| x["s"] == "up"), "a foreign page got a session: {s}");
    // It gives up with the reason (instead of looping on connecting/down),
    // and the gateway logged the refused origin.
    let s = browser.js("h.until(() => h.states.some(x => x.s === 'failed'), 'failed after every transport was refused', 30000)");
    let failed = s["states"].as_array().unwrap().iter().find(|x| x["s"] == "failed").cloned().unwrap();
    let reason = failed["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("web.allowed_origins") && reason.contains(&format!("http://localhost:{page_port}")), "{failed}");
    let log = server.stderr_tail();
    assert!(log.contains(&format!("refused an HTTP request from origin \"http://localhost:{page_port}\"")), "{log}");
    browser.js("h.client.close(), true");
    let r = browser.js(&route);
    assert!(r.as_str().is_some_and(|s| s.starts_with("refused")), "route readable from a foreign origin: {r}");
    // The refusals were the server's 403, seen by the browser's network stack.
    let statuses: Vec<i64> = browser
        .events
        .iter()
        .filter_map(|(m, p)| match m.as_str() {
            "Network.responseReceived" => p["response"]["status"].as_i64(),
            "Network.webSocketHandshakeResponseReceived" => p["response"]["status"].as_i64(),
            _ => None,
        })
        .collect();
    assert!(statuses.contains(&403), "no 403 seen by the browser; statuses {statuses:?}\n{}", browser.log_tail());
    assert!(!statuses.contains(&101), "a foreign WebSocket was upgraded: {statuses:?}");

    // The listed origin: the same page works (WebSocket up, route readable).
    browser.open(&format!("http://127.0.0.1:{page_port}/"));
    let opts = json!({"url": gate, "token": token("alice"), "deviceId": "allowed", "transports": ["ws"]});
    browser.js(&format!("h.start({opts}), true"));
    let s = browser.js("h.until(() => h.ups() >= 1, 'up from the allowed origin')");
    assert_eq!(s["transport"], json!("ws"), "{s}");
    assert_eq!(browser.js(&route), json!(200));
    browser.js("h.client.close(), true");
    drop(browser);
    server.assert_no_panic();
}

/// A middlebox in front of a plain-TCP ringgate: it completes every
/// WebSocket upgrade itself and then carries nothing (as some proxies and
/// captive portals do), and passes any other HTTP connection through.
fn silent_websocket_proxy(upstream: std::net::SocketAddr) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    if head.len() > 64 * 1024 {
                        return;
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                if text.starts_with("GET /v1/ws") {
                    let key = text
                        .lines()
                        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim().to_string()))
                        .unwrap_or_default();
                    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                    let _ = write!(
                        conn,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: ringgate.v1\r\n\r\n"
                    );
                    // Swallow whatever the client sends; never answer.
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    return;
                }
                let Ok(mut up) = TcpStream::connect(upstream) else { return };
                if up.write_all(&head).is_err() {
                    return;
                }
                let (mut c2, mut u2) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut conn, &mut up);
                let _ = up.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A WebSocket that opens but carries no frames is not trusted: without a
/// CONNACK and a PONG the client gives it up after `attemptTimeoutMs` and
/// falls back to SSE, which then carries messages both ways. Behind the
/// proxy ringgate listens on plain TCP (as behind a TLS-terminating proxy).
#[test]
fn browser_silent_websocket_falls_back() {
    let Some(bin) = chromium_or_skip("browser_silent_websocket_falls_back") else { return };
    let page_port = serve_pages();
    let server = Config::default()
        .tls(false)
        .set("web", format!("allowed_origins = [\"http://127.0.0.1:{page_port}\"]"))
        .start();
    let proxy = silent_websocket_proxy(server.addr());
    let (mut bob, _) = server.login("bob", "phone", 0);
    bob.send_ok(1, "alice", b"offline-1");
    let mut browser = Chromium::launch(&bin);
    browser.open(&format!("http://127.0.0.1:{page_port}/"));
    let opts = json!({"url": format!("http://127.0.0.1:{proxy}"), "token": token("alice"), "deviceId": "behind-proxy", "attemptTimeoutMs": 2000});
    browser.js(&format!("h.start({opts}), true"));
    let s = browser.js("h.until(() => h.msgs.length >= 1, 'the replay after falling back')");
    let states = s["states"].as_array().unwrap();
    assert_eq!(states[0], json!({"s": "connecting", "transport": "ws"}), "{s}");
    assert!(states[1]["s"] == "down" && states[1]["transport"] == "ws", "the silent WebSocket was trusted: {s}");
    assert_eq!(s["transport"], json!("sse"), "{s}");
    assert_eq!(s["msgs"][0]["text"], json!("offline-1"), "{s}");
    let ack = browser.js("h.send('bob', 'via sse')");
    assert_eq!(ack["status"], json!(0), "{ack}");
    bob.expect_push_seq(1, b"via sse");
    browser.js("h.client.close(), true");
    drop(browser);
    server.assert_no_panic();
}
