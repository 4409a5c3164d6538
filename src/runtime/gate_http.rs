//! HTTP/1.1 on the gateway port — `GET /v1/route`, the WebSocket upgrade at `GET /v1/ws`, and the session requests of SSE and long-poll handed to the core: detection (ALPN or first byte), request heads parsed with httparse, bodies, the Origin policy, keep-alive.
//!
//! Sans-IO like the rest of the connection path: [`serve`] turns buffered
//! plaintext into buffered responses, and the core flushes them through the
//! connection's TLS. Kept self-contained on purpose: WebSocket, SSE and
//! long-poll (WEB.md) will share the gateway port later and this file is
//! meant to fold into the general HTTP module then; only [`on_io`],
//! [`is_http`] and [`HttpState`] are used from outside (core.rs), plus
//! [`SessionReq`] and [`write_answer`] for the session requests
//! (`core/sessions.rs`), which need the core's state and are answered there.

use bytes::BytesMut;

use crate::config::WebConfig;
use crate::route::{RouteQuery, RouteService};

/// Largest request head accepted (WEB.md): `431` beyond.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers parsed per request; more is `431` too.
const MAX_HEADERS: usize = 64;
/// Pipelined requests are answered until this much output waits unsent;
/// the rest waits in the input until the peer reads.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Input a peer may pile up (pipelined requests) while not reading its
/// answers; beyond it the connection is closed.
const MAX_PIPELINED_BYTES: usize = 1 << 20;

/// Whether a connection carries HTTP: ALPN `http/1.1`, or no ALPN and a
/// first byte that is an ASCII letter (a request line; frames start with a
/// length whose first byte is 0 for any frame under 16 MiB).
pub fn is_http(alpn: Option<&[u8]>, first_byte: u8) -> bool {
    match alpn {
        Some(b"http/1.1") => true,
        Some(_) => false,
        None => first_byte.is_ascii_alphabetic(),
    }
}

/// Everything HTTP on the gateway port needs, shared by every core.
pub struct Gate {
    pub route: RouteService,
    pub origins: OriginPolicy,
    pub keepalive_idle_ms: u64,
    /// Largest request body (`max_frame × 64`): `413` beyond.
    pub max_body_bytes: u64,
    /// `web.poll_timeout_s` in ms.
    pub poll_timeout_ms: u64,
}

impl Gate {
    /// The gate of a server with this config (`route` built by the caller: it needs the listener's address and key).
    pub fn new(cfg: &crate::config::Config, route: RouteService) -> Self {
        Gate {
            route,
            origins: OriginPolicy::new(&cfg.web),
            keepalive_idle_ms: cfg.web.keepalive_idle_s.saturating_mul(1000),
            max_body_bytes: u64::from(cfg.session.max_frame).saturating_mul(64),
            poll_timeout_ms: cfg.web.poll_timeout_s.saturating_mul(1000),
        }
    }
}

/// One HTTP connection's state.
#[derive(Debug)]
pub struct HttpState {
    /// Close when the monotonic clock passes this: the handshake deadline
    /// until the first complete head, then the keep-alive idle deadline.
    pub deadline_ms: u64,
    /// A response said `Connection: close` (or the request was bad): flush and close.
    pub closing: bool,
    pub requests: u64,
    /// A 101 was written: the rest of the connection is WebSocket.
    pub upgraded: bool,
    /// A long-poll is open on this connection: no further request is
    /// served until it is answered (by the core).
    pub parked: bool,
    /// The open poll's allowed foreign origin (its answer carries CORS).
    pub poll_cross: Option<String>,
    /// Requests refused for their `Origin` since the core last looked, and
    /// the last such origin: the core counts them
    /// (`ringgate_rejections_total{reason="origin"}`) and logs one, rate-limited.
    pub refused_origins: u32,
    pub refused_origin: Option<String>,
}

impl HttpState {
    pub fn new(deadline_ms: u64) -> Self {
        HttpState {
            deadline_ms,
            closing: false,
            requests: 0,
            upgraded: false,
            parked: false,
            poll_cross: None,
            refused_origins: 0,
            refused_origin: None,
        }
    }
}

impl HttpState {
    fn refuse_origin(&mut self, origin: &str) {
        self.refused_origins = self.refused_origins.saturating_add(1);
        // Peer-chosen text in a log line: bounded and printable only.
        let shown: String = origin.chars().take(128).map(|c| if c.is_control() { '?' } else { c }).collect();
        self.refused_origin = Some(shown);
    }
}

/// What the connection does after an HTTP I/O step.
#[derive(Debug)]
pub enum Step {
    Continue,
    /// Done (a response said `Connection: close`, a bad request, or EOF) and everything was written.
    Close,
    /// Switched to WebSocket; the 101 is in (or through) `out`.
    Upgraded,
    /// A session request (SSE, send, long-poll) for the core to answer;
    /// the requests before it are answered and flushed.
    Session(Box<SessionReq>),
}

/// A request on a session path, parsed and past the Origin policy.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionReq {
    pub method: String,
    /// The path without its query.
    pub path: String,
    pub query: String,
    pub body: BytesMut,
    pub last_event_id: Option<String>,
    /// The allowed foreign origin: its answer carries the CORS headers.
    pub cross: Option<String>,
}

/// Paths whose requests the core answers (`core/sessions.rs`).
pub fn is_session_path(p: &str) -> bool {
    matches!(p, "/v1/sse" | "/v1/send" | "/v1/lp/connect" | "/v1/lp")
}

/// A connection known to carry HTTP had I/O: answer the complete requests,
/// flush, and release idle buffers.
pub fn on_io(conn: &mut super::conn::Conn, gate: &Gate, tls: bool, mono_ms: u64, wall_ms: u64, eof: bool) -> Step {
    loop {
        let Some(st) = conn.http.as_mut() else { return Step::Close };
        let before = conn.rbuf.len();
        let mut session = None;
        let close = serve(&mut conn.rbuf, &mut conn.out, st, gate, tls, mono_ms, wall_ms, &mut session) || eof;
        if st.upgraded {
            return Step::Upgraded;
        }
        if let Some(req) = session {
            // The core answers it, then serves what follows.
            return match conn.flush() {
                Err(_) => Step::Close,
                Ok(_) => Step::Session(req),
            };
        }
        match conn.flush() {
            Err(_) => return Step::Close,
            Ok(true) if close => {
                conn.shutdown_write();
                return Step::Close;
            }
            // Everything went out and pipelined requests were left at the
            // output high-water mark: answer them now, not at the next
            // (maybe never) readable event.
            Ok(true) if !conn.rbuf.is_empty() && conn.rbuf.len() < before => {}
            Ok(_) => break,
        }
    }
    conn.release_idle_buffers();
    Step::Continue
}

/// Handles every complete request in `rbuf`, appending responses to `out`.
/// Returns true when the connection must close once `out` is flushed.
/// Stops at a session request, which it leaves in `session`.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
    st: &mut HttpState,
    gate: &Gate,
    tls: bool,
    mono_ms: u64,
    wall_ms: u64,
    session: &mut Option<Box<SessionReq>>,
) -> bool {
    loop {
        if st.parked && rbuf.len() > MAX_PIPELINED_BYTES {
            // Piles up requests behind an open poll: a slow consumer too.
            st.closing = true;
            rbuf.clear();
            return true;
        }
        if st.upgraded || st.parked || session.is_some() {
            return false;
        }
        if st.closing {
            // Nothing more is read from a closing connection.
            rbuf.clear();
            return true;
        }
        if rbuf.is_empty() {
            return false;
        }
        if out.len() >= OUT_HIGH_WATER {
            if rbuf.len() > MAX_PIPELINED_BYTES {
                // Sends requests, never reads answers: a slow consumer.
                st.closing = true;
                rbuf.clear();
                return true;
            }
            return false;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(rbuf) {
            Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_BYTES => n,
            Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
                return fail(out, st, 431, "request head too large");
            }
            Ok(httparse::Status::Partial) if rbuf.len() > MAX_HEAD_BYTES => return fail(out, st, 431, "request head too large"),
            Ok(httparse::Status::Partial) => return false,
            Err(httparse::Error::Version) => return fail(out, st, 505, "only HTTP/1.1 is served"),
            Err(_) => return fail(out, st, 400, "malformed request"),
        };
        if req.version != Some(1) {
            return fail(out, st, 505, "only HTTP/1.1 is served");
        }
        let header = |name: &str| {
            req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        // Bodies: none is needed by the route endpoint, but a request that
        // has one must be skipped whole to keep the connection in step.
        let chunked = header("transfer-encoding").is_some();
        let body_len: u64 = match header("content-length").map(|v| v.parse::<u64>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => return fail(out, st, 400, "bad Content-Length"),
        };
        if body_len > gate.max_body_bytes {
            return fail(out, st, 413, "request body too large");
        }
        let path_only = req.path.unwrap_or("").split('?').next().unwrap_or("");
        let for_session = is_session_path(path_only) && req.method != Some("OPTIONS");
        // A session request's chunked body is decoded; elsewhere it is
        // not read (answer, then close).
        let (total, chunked_body) = if chunked && for_session {
            match dechunk(&rbuf[head_len..], gate.max_body_bytes) {
                Err(status) => return fail(out, st, status, "bad chunked body"),
                Ok(None) => return false,
                Ok(Some((body, used))) => ((head_len + used) as u64, Some(body)),
            }
        } else {
            (head_len as u64 + body_len, None)
        };
        if (rbuf.len() as u64) < total {
            return false;
        }
        let close_asked = header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        let method = req.method.unwrap_or("").to_string();
        let path = req.path.unwrap_or("").to_string();
        let host = header("host");
        let origin = header("origin");
        let last_event_id = header("last-event-id");
        let upgrade = Upgrade {
            websocket: header("upgrade").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket"))),
            connection_upgrade: header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))),
            key: header("sec-websocket-key"),
            version: header("sec-websocket-version"),
            // Every Sec-WebSocket-Protocol header, comma lists joined.
            protocols: req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
                .flat_map(|h| String::from_utf8_lossy(h.value).split(',').map(|t| t.trim().to_string()).collect::<Vec<_>>())
                .filter(|t| !t.is_empty())
                .collect(),
            body_len,
        };
        let mut whole = rbuf.split_to(total as usize);
        st.requests += 1;
        st.deadline_ms = mono_ms + gate.keepalive_idle_ms;
        if for_session {
            if close_asked {
                st.closing = true;
            }
            let cross = match origin.as_deref() {
                None => None,
                Some(o) => match gate.origins.check(o, host.as_deref(), tls) {
                    OriginVerdict::SameOrigin => None,
                    OriginVerdict::Allowed => Some(o.to_string()),
                    OriginVerdict::Forbidden => {
                        st.refuse_origin(o);
                        write_response(out, &Response::text(403, "origin not allowed"), st.closing);
                        continue;
                    }
                },
            };
            let (p, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
            let body = match chunked_body {
                Some(b) => b,
                None => whole.split_off(head_len),
            };
            *session = Some(Box::new(SessionReq {
                method,
                path: p.to_string(),
                query: query.to_string(),
                body,
                last_event_id,
                cross,
            }));
            return false;
        }
        drop(whole);
        // A chunked body is not parsed here: answer, then close.
        if close_asked || chunked {
            st.closing = true;
        }
        if let Some(o) = origin.as_deref() {
            if gate.origins.check(o, host.as_deref(), tls) == OriginVerdict::Forbidden {
                st.refuse_origin(o);
            }
        }
        let r = respond(gate, tls, &method, &path, host.as_deref(), origin.as_deref(), &upgrade, mono_ms, wall_ms);
        if r.status == 101 {
            if chunked {
                return fail(out, st, 400, "a WebSocket upgrade has no body");
            }
            write_response(out, &r, false);
            st.upgraded = true;
            return false;
        }
        write_response(out, &r, st.closing);
    }
}

/// The headers of a WebSocket upgrade request.
struct Upgrade {
    websocket: bool,
    connection_upgrade: bool,
    key: Option<String>,
    version: Option<String>,
    protocols: Vec<String>,
    body_len: u64,
}

/// `GET /v1/ws`: the RFC 6455 handshake checks, then 101.
fn websocket(u: &Upgrade) -> Response {
    use super::web::ws;
    if !u.websocket || !u.connection_upgrade {
        let mut r = Response::text(426, "WebSocket upgrade required");
        r.extra.push(("Upgrade", "websocket".into()));
        return r;
    }
    if u.version.as_deref() != Some("13") {
        let mut r = Response::text(426, "WebSocket version 13 required");
        r.extra.push(("Sec-WebSocket-Version", "13".into()));
        return r;
    }
    let Some(key) = u.key.as_deref().filter(|k| ws::key_valid(k)) else {
        return Response::text(400, "bad Sec-WebSocket-Key");
    };
    if u.body_len != 0 {
        return Response::text(400, "a WebSocket upgrade has no body");
    }
    let offered = !u.protocols.is_empty();
    if offered && !u.protocols.iter().any(|p| p == ws::SUBPROTOCOL) {
        return Response::text(400, "subprotocol ringgate.v1 required");
    }
    let mut r = Response::text(101, "");
    r.body.clear();
    r.extra.push(("Upgrade", "websocket".into()));
    r.extra.push(("Connection", "Upgrade".into()));
    r.extra.push(("Sec-WebSocket-Accept", ws::accept_key(key)));
    if offered {
        r.extra.push(("Sec-WebSocket-Protocol", ws::SUBPROTOCOL.into()));
    }
    r
}

/// A response before serialisation.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    extra: Vec<(&'static str, String)>,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: format!("{body}\n"), extra: Vec::new() }
    }
}

#[allow(clippy::too_many_arguments)]
fn respond(
    gate: &Gate,
    tls: bool,
    method: &str,
    path: &str,
    host: Option<&str>,
    origin: Option<&str>,
    upgrade: &Upgrade,
    mono_ms: u64,
    wall_ms: u64,
) -> Response {
    // Origin first: a forbidden origin learns nothing, not even 404 vs 405.
    let cross = match origin {
        None => None,
        Some(o) => match gate.origins.check(o, host, tls) {
            OriginVerdict::SameOrigin => None,
            OriginVerdict::Allowed => Some(o.to_string()),
            OriginVerdict::Forbidden => return Response::text(403, "origin not allowed"),
        },
    };
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    let mut r = if method == "OPTIONS" && cross.is_some() {
        let mut r = Response::text(204, "");
        r.body.clear();
        r.extra.push(("Access-Control-Allow-Methods", "GET, POST".into()));
        r.extra.push(("Access-Control-Allow-Headers", "Content-Type, Last-Event-ID".into()));
        r.extra.push(("Access-Control-Max-Age", "600".into()));
        r
    } else if p == "/v1/ws" {
        if method == "GET" {
            websocket(upgrade)
        } else {
            let mut r = Response::text(405, "method not allowed");
            r.extra.push(("Allow", "GET".into()));
            r
        }
    } else if p != "/v1/route" {
        Response::text(404, "not found")
    } else if method != "GET" {
        let mut r = Response::text(405, "method not allowed");
        r.extra.push(("Allow", "GET".into()));
        r
    } else {
        let q = RouteQuery::parse(query);
        let body = gate.route.answer(&q, host, mono_ms, wall_ms);
        Response { status: 200, content_type: "application/json", body, extra: vec![("Cache-Control", "no-store".into())] }
    };
    if let Some(o) = cross {
        r.extra.push(("Access-Control-Allow-Origin", o));
        r.extra.push(("Vary", "Origin".into()));
        r.extra.push(("Access-Control-Expose-Headers", "X-Ringgate-Session".into()));
    }
    r
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        503 => "Service Unavailable",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn write_response(out: &mut BytesMut, r: &Response, close: bool) {
    use std::fmt::Write;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    if r.status != 204 && r.status != 101 {
        let _ = write!(head, "Content-Type: {}\r\nContent-Length: {}\r\n", r.content_type, r.body.len());
    }
    for (k, v) in &r.extra {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(r.body.as_bytes());
}

/// Writes the answer to a session request (`core/sessions.rs`): `status`,
/// an optional body with its type, extra headers, and the CORS headers for
/// an allowed foreign origin (WEB.md: on every answer, 4xx included).
pub fn write_answer(
    out: &mut BytesMut,
    status: u16,
    body: Option<(&'static str, &[u8])>,
    extra: Vec<(&'static str, String)>,
    cross: Option<&str>,
    close: bool,
) {
    use std::fmt::Write;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", status, reason(status));
    if let Some((ty, b)) = body {
        let _ = write!(head, "Content-Type: {ty}\r\nContent-Length: {}\r\n", b.len());
    }
    for (k, v) in extra.iter().chain(cors(cross).iter()) {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if let Some((_, b)) = body {
        out.extend_from_slice(b);
    }
}

/// The CORS headers of an answer to an allowed cross-origin request.
fn cors(cross: Option<&str>) -> Vec<(&'static str, String)> {
    match cross {
        None => Vec::new(),
        Some(o) => vec![
            ("Access-Control-Allow-Origin", o.to_string()),
            ("Vary", "Origin".into()),
            ("Access-Control-Expose-Headers", "X-Ringgate-Session".into()),
        ],
    }
}

/// Decodes a chunked body at the start of `buf`: `Ok(None)` until it is
/// complete; `Ok(Some((body, bytes used)))`; `Err(status)` when malformed
/// (`400`) or above `max` (`413`). Trailers are skipped.
fn dechunk(buf: &[u8], max: u64) -> Result<Option<(BytesMut, usize)>, u16> {
    let mut body = BytesMut::new();
    let mut pos = 0;
    let line = |from: usize| -> Option<(usize, usize)> {
        let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((from + rel, from + rel + 2))
    };
    loop {
        let Some((end, next)) = line(pos) else {
            // A size line is a few bytes; one that never ends is garbage.
            return if buf.len() - pos > 1024 { Err(400) } else { Ok(None) };
        };
        let size_txt = std::str::from_utf8(&buf[pos..end]).map_err(|_| 400u16)?;
        let size_txt = size_txt.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_txt, 16).map_err(|_| 400u16)?;
        if body.len() as u64 + size > max {
            return Err(413);
        }
        pos = next;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let Some((end, next)) = line(pos) else {
                    return if buf.len() - pos > MAX_HEAD_BYTES { Err(400) } else { Ok(None) };
                };
                let empty = end == pos;
                pos = next;
                if empty {
                    return Ok(Some((body, pos)));
                }
            }
        }
        let size = size as usize;
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(400);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Answers a bad request and marks the connection closing.
fn fail(out: &mut BytesMut, st: &mut HttpState, status: u16, why: &str) -> bool {
    st.closing = true;
    write_response(out, &Response::text(status, why), true);
    true
}

/// An origin as compared: scheme, lowercase host, port (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` / `[v6][:port]`, filling the scheme's default port.
fn parse_authority(scheme: &str, a: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => default_port(scheme)?,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (a.to_string(), default_port(scheme)?),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

fn parse_origin(o: &str) -> Option<Origin> {
    let (scheme, rest) = o.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return None;
    }
    let (host, port) = parse_authority(&scheme, rest)?;
    Some(Origin { scheme, host, port })
}

/// One `web.allowed_origins` entry.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: hosts ending in `.suffix`, not `suffix` itself.
    Wildcard { scheme: String, suffix: String, port: u16 },
    Null,
}

/// What the Origin policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginVerdict {
    /// The request's own origin: no CORS headers needed.
    SameOrigin,
    /// A listed cross origin: allowed, with CORS headers.
    Allowed,
    /// `403`, no CORS headers.
    Forbidden,
}

/// `web.allowed_origins` compiled, plus `web.assume_https`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    patterns: Vec<Pattern>,
    assume_https: bool,
}

impl OriginPolicy {
    /// Entries that do not parse are skipped (config validation reports them).
    pub fn new(web: &WebConfig) -> Self {
        let mut patterns = Vec::new();
        for p in &web.allowed_origins {
            if p == "null" {
                patterns.push(Pattern::Null);
            } else if let Some((scheme, rest)) = p.split_once("://*.") {
                let scheme = scheme.to_ascii_lowercase();
                if let Some((suffix, port)) = parse_authority(&scheme, rest) {
                    patterns.push(Pattern::Wildcard { scheme, suffix: format!(".{suffix}"), port });
                }
            } else if let Some(o) = parse_origin(p) {
                patterns.push(Pattern::Exact(o));
            }
        }
        OriginPolicy { patterns, assume_https: web.assume_https }
    }

    /// Judges the `Origin` header of a request that arrived with `Host`.
    pub fn check(&self, origin: &str, host: Option<&str>, tls: bool) -> OriginVerdict {
        if origin == "null" {
            return if self.patterns.iter().any(|p| matches!(p, Pattern::Null)) {
                OriginVerdict::Allowed
            } else {
                OriginVerdict::Forbidden
            };
        }
        let Some(o) = parse_origin(origin) else { return OriginVerdict::Forbidden };
        let own_scheme = if tls || self.assume_https { "https" } else { "http" };
        if let Some(own) = host.and_then(|h| parse_authority(own_scheme, h)) {
            if o.scheme == own_scheme && (o.host.as_str(), o.port) == (own.0.as_str(), own.1) {
                return OriginVerdict::SameOrigin;
            }
        }
        let ok = self.patterns.iter().any(|p| match p {
            Pattern::Exact(e) => *e == o,
            Pattern::Wildcard { scheme, suffix, port } => *scheme == o.scheme && *port == o.port && o.host.ends_with(suffix.as_str()),
            Pattern::Null => false,
        });
        if ok {
            OriginVerdict::Allowed
        } else {
            OriginVerdict::Forbidden
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&WebConfig { allowed_origins: list.iter().map(|s| s.to_string()).collect(), ..WebConfig::default() })
    }

    #[test]
    fn detection() {
        assert!(is_http(None, b'G'));
        assert!(!is_http(None, 0));
        assert!(is_http(Some(b"http/1.1"), 0));
        assert!(!is_http(Some(b"ringgate/1"), b'G'));
    }

    #[test]
    fn origins() {
        let p = policy(&["https://app.example.com", "https://*.example.org:8443", "null"]);
        use OriginVerdict::*;
        assert_eq!(p.check("https://APP.example.com:443", None, true), Allowed);
        assert_eq!(p.check("http://app.example.com", None, true), Forbidden);
        assert_eq!(p.check("https://a.example.org:8443", None, true), Allowed);
        assert_eq!(p.check("https://example.org:8443", None, true), Forbidden);
        assert_eq!(p.check("https://a.example.org", None, true), Forbidden);
        assert_eq!(p.check("null", None, true), Allowed);
        assert_eq!(policy(&[]).check("null", None, true), Forbidden);
        assert_eq!(p.check("garbage", None, true), Forbidden);
        // Own origin: https on TLS, with the Host's port.
        assert_eq!(policy(&[]).check("https://im.example.com:7443", Some("im.example.com:7443"), true), SameOrigin);
        assert_eq!(policy(&[]).check("http://im.example.com:7443", Some("im.example.com:7443"), true), Forbidden);
        assert_eq!(policy(&[]).check("http://localhost", Some("localhost:80"), false), SameOrigin);
    }
}
